"""Loss masks from segments, truncation, and the packed forward pass."""

from __future__ import annotations

import pytest
import torch

from trainer.examples import Example, example_from_trajectory, pack, packed_logps, truncate
from trainer.losses import sequence_logps


def test_mask_comes_from_segments_including_the_models_stop_token(make_traj):
    # the observation holds the eos id and the model turn a "```output"-like id: only the kind matters
    traj = make_traj("q", [("p", [5, 6, 7]), ("m", [8, 9, 2]), ("o", [2, 8]), ("m", [10, 2])])
    ex = example_from_trajectory(traj)
    assert ex.input_ids == [5, 6, 7, 8, 9, 2, 2, 8, 10, 2]
    assert ex.loss_mask == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    assert ex.prompt_len == 3 and ex.n_model_tokens == 5


def test_truncation_cuts_the_tail_never_the_prompt():
    ex = Example(input_ids=list(range(10)), loss_mask=[0, 0, 0, 0, 1, 1, 0, 1, 1, 1], prompt_len=4)
    cut = truncate(ex, 7)
    assert cut is not None and cut.input_ids == list(range(7)) and cut.loss_mask == [0, 0, 0, 0, 1, 1, 0]
    assert truncate(ex, 4) is None  # the prompt alone fills the budget: dropped, not cut
    assert truncate(ex, 10) is ex


def test_packed_forward_equals_separate_forwards_and_wastes_no_position(tokenizer):
    from agent.modelstore import tiny_random_model

    model = tiny_random_model(tokenizer)
    g = torch.Generator().manual_seed(0)
    exs = []
    for length, plen in [(20, 5), (33, 10), (7, 3)]:
        mask = [0] * plen + [1] * (length - plen)
        mask[plen + 2] = 0  # an observation token inside the response
        exs.append(Example(input_ids=torch.randint(0, 1000, (length,), generator=g).tolist(), loss_mask=mask, prompt_len=plen))
    batch = pack(exs)
    assert batch.n_tokens == 20 + 33 + 7  # no padding
    assert len(batch.keep) == sum(e.n_model_tokens for e in exs)  # LM head only where a model token is predicted
    with torch.no_grad():
        logps, n = packed_logps(model, batch)
        for i, e in enumerate(exs):
            ids = torch.tensor([e.input_ids])
            want, want_n = sequence_logps(model(ids).logits[:, :-1], ids[:, 1:], torch.tensor([e.loss_mask[1:]]))
            assert logps[i].item() == pytest.approx(want.item(), abs=1e-4)
            assert int(n[i]) == int(want_n)


def _separate(model, exs):
    """Each sequence through the model on its own (the plain HF forward): summed masked log-probs."""
    out = []
    for e in exs:
        ids = torch.tensor([e.input_ids])
        lp, _ = sequence_logps(model(ids).logits[:, :-1], ids[:, 1:], torch.tensor([e.loss_mask[1:]]))
        out.append(lp[0])
    return torch.stack(out)


def test_shared_prefix_packing_gives_the_separate_values_and_gradients(tokenizer):
    """Items whose sequences share a prompt AND part of the response (one diverges at its first
    response token, one is a prefix of another) store the prefix once, yet every log-prob and
    every parameter gradient equals running each sequence separately."""
    from agent.modelstore import tiny_random_model

    model = tiny_random_model(tokenizer)
    model.train()
    g = torch.Generator().manual_seed(1)

    def rand(n):
        return torch.randint(100, 3000, (n,), generator=g).tolist()

    def ex(ids, plen, obs=()):
        mask = [0] * plen + [1] * (len(ids) - plen)
        for i in obs:
            mask[i] = 0
        return Example(input_ids=ids, loss_mask=mask, prompt_len=plen)

    p1, r1 = rand(9), rand(14)
    p2 = rand(6)
    a, b = rand(5), rand(7)
    exs = [
        ex(p1 + r1, 9, obs=(15, 16)), ex(p1 + r1[:6] + rand(8), 9, obs=(15, 16)),  # share 6 response tokens
        ex(p2 + a, 6), ex(p2 + b, 6),  # diverge at the first response token
        ex(p2 + a, 6), ex(p2 + a + b, 6),  # one is a prefix of the other
    ]
    batch = pack(exs, group_size=2)
    assert batch.n_sequence_tokens == sum(len(e) for e in exs)
    assert batch.n_tokens == batch.n_sequence_tokens - (9 + 6) - 6 - (6 + 5)  # each shared prefix stored once
    assert len(batch.keep) == sum(e.n_model_tokens for e in exs)
    w = torch.randn(len(exs), generator=g, dtype=torch.float64)

    logps, n = packed_logps(model, batch)
    (logps.double() * w).sum().backward()
    packed_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    want = _separate(model, exs)
    (want.double() * w).sum().backward()
    assert torch.allclose(logps, want, atol=1e-4)
    assert n.tolist() == [e.n_model_tokens for e in exs]
    for k, p in model.named_parameters():
        assert torch.allclose(packed_grads[k], p.grad, atol=1e-5, rtol=1e-4), k


def test_chunked_head_logps_equal_full_log_softmax_with_gradients():
    from trainer.examples import head_logps

    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(16, 50, bias=True).double()
    hidden = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (23,), generator=g)
    got = head_logps(hidden, head, labels, chunk=5)  # 5 chunks, the last one short
    got.sum().backward()
    chunked = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = None
    head.zero_grad()
    want = torch.log_softmax(head(hidden), -1).gather(-1, labels[:, None])[:, 0]
    want.sum().backward()
    assert torch.allclose(got, want, atol=1e-12)
    for a, b in zip(chunked, (hidden.grad, head.weight.grad, head.bias.grad), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_packed_attention_is_scoped_and_refuses_an_unpacked_call(tokenizer):
    from agent.modelstore import tiny_random_model
    from trainer.attention import packed_attention

    model = tiny_random_model(tokenizer)
    before = model.config._attn_implementation
    with packed_attention(model), pytest.raises(RuntimeError, match="packed_groups"):
        model(torch.tensor([[5, 6, 7]]))
    assert model.config._attn_implementation == before
    model(torch.tensor([[5, 6, 7]]))  # the ordinary forward works again afterwards
