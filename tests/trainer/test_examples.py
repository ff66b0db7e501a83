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
