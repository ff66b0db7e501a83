"""A tiny random model trained on synthetic pairs: curves, parameters, checkpoint, LoRA, resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from trainer.config import TrainConfig
from trainer.pairs import irpo_pairs
from trainer.train import train


@pytest.fixture(scope="module")
def pairs(make_traj):
    """Pairs shaped like real math pairs: problems share a prompt template, chosen and rejected
    share the whole response (reasoning, a tool call, its observation) and differ only in the
    final answer token, and answers come from a small set shared by all problems, so one
    problem's wrong answer is another's right one. The observation must stay out of the loss."""
    g = torch.Generator().manual_seed(1)

    def rand(n):
        return torch.randint(100, 3000, (n,), generator=g).tolist()

    template, answers = rand(10), rand(4)
    trajs = []
    for i in range(8):
        prompt, obs = template[:3] + rand(6), rand(3)
        first, second = template[3:7] + rand(2), template[7:] + rand(2)
        right, wrong = torch.randperm(4, generator=g)[:2].tolist()
        for answer, correct in ((answers[right], True), (answers[wrong], False)):
            parts = [("p", prompt), ("m", first), ("o", obs), ("m", [*second, answer, 2])]
            trajs.append(make_traj(f"p{i}", parts, correct=correct))
    return irpo_pairs(trajs, k=1).pairs


def run(tmp_path, name, tokenizer, pairs, model=None, **kw):
    from agent.modelstore import tiny_random_model

    model = model if model is not None else tiny_random_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = dict(pairs=tmp_path / "unused.jsonl", out=tmp_path / name, lr=1e-3, epochs=12, per_device_batch_size=4,
                warmup_ratio=0.0, progress=False)
    opts.update(kw)
    result = train(TrainConfig(**opts), model=model, tokenizer=tokenizer, pairs=pairs)
    curves = [json.loads(line) for line in (tmp_path / name / "curves.jsonl").read_text().splitlines()]
    return model, before, result, curves


def on_policy_model(tmp_path, tokenizer, pairs):
    """A tiny random model fine-tuned (SFT) on BOTH sides of every pair, so that, as in IRPO where
    the policy sampled them itself, chosen and rejected are likely sequences of the model."""
    from agent.modelstore import tiny_random_model

    both = [p.model_copy(update={"chosen": seq}) for p in pairs for seq in (p.chosen, p.rejected)]
    model = tiny_random_model(tokenizer)
    run(tmp_path, "warmup", tokenizer, both, model=model, loss="sft", epochs=5, shuffle=True)
    return model


@pytest.mark.slow
def test_dpo_alone_lowers_the_chosen_logprob_and_dpo_nll_raises_it(tmp_path, tokenizer, pairs):
    """IRPO's Figure 2: with DPO alone the chosen log-prob FALLS while the margin grows (both
    sides fall, the rejected faster); with the NLL term it rises.

    The pairs must be on-policy, as in IRPO (the model sampled them): on a freshly initialised
    model every sequence sits near the uniform -ln(vocab) per token, so almost any update
    raises the chosen log-prob, DPO alone included (it rose ~2 nats there). After the SFT
    warm-up on both sides, chosen and rejected are likely sequences that share all but their
    answer token, and DPO pushes both down.
    """
    from agent.modelstore import load_model

    nll_start = on_policy_model(tmp_path, tokenizer, pairs)
    dpo_start = copy.deepcopy(nll_start)
    model, before, result, nll = run(tmp_path, "nll", tokenizer, pairs, model=nll_start, loss="dpo+nll", alpha=1.0, epochs=8)
    _, _, _, dpo = run(tmp_path, "dpo", tokenizer, pairs, model=dpo_start, loss="dpo", epochs=8)
    assert result.steps == len(nll) == len(dpo) == 16
    assert nll[0]["logps_chosen"] == pytest.approx(dpo[0]["logps_chosen"], abs=1e-3)  # the same starting point
    for curve in (nll, dpo):
        assert curve[-1]["margin"] > curve[0]["margin"] + 0.01  # the margin grows in both
    n_tokens = 16  # model tokens of each chosen sequence
    assert dpo[-1]["logps_chosen"] <= dpo[0]["logps_chosen"] + 0.05 * n_tokens  # falls (or at least does not rise)
    assert dpo[-1]["logps_rejected"] - dpo[0]["logps_rejected"] < dpo[-1]["logps_chosen"] - dpo[0]["logps_chosen"]
    assert nll[-1]["logps_chosen"] > nll[0]["logps_chosen"] + 0.5 * n_tokens  # rises by > 0.5 nat per token
    # every trainable parameter changed
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []
    # a loadable HF checkpoint with the trained weights
    loaded = load_model(tmp_path / "nll")
    ids = torch.tensor([pairs[0].chosen.input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_steps(tmp_path, tokenizer, pairs):
    """Layers recomputed in backward see the same packed attention as the forward did."""
    _, _, _, plain = run(tmp_path, "plain", tokenizer, pairs, loss="dpo+nll", max_steps=2)
    _, _, _, gc = run(tmp_path, "gc", tokenizer, pairs, loss="dpo+nll", max_steps=2, gradient_checkpointing=True)
    assert len(plain) == len(gc) == 2
    for a, b in zip(plain, gc, strict=True):
        for key in ("loss", "logps_chosen", "logps_rejected", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert plain[1]["loss"] != pytest.approx(plain[0]["loss"])


@pytest.mark.slow
def test_lora_run_resumes_to_the_same_curve_and_saves_a_merged_checkpoint(tmp_path, tokenizer, pairs):
    from agent.modelstore import load_model

    common = dict(loss="dpo+nll", lora=True, lora_r=4, lr=5e-3, per_device_batch_size=2, gradient_accumulation_steps=2,
                  warmup_ratio=0.25, epochs=2, save_steps=2)
    _, _, full_result, full = run(tmp_path, "full", tokenizer, pairs, **common)
    assert full_result.steps == 4
    _, _, _, first = run(tmp_path, "part", tokenizer, pairs, stop_after_steps=2, **common)
    assert len(first) == 2
    _, _, resumed_result, resumed = run(tmp_path, "part", tokenizer, pairs, resume=True, **common)
    assert resumed_result.steps == 4 and len(resumed) == 4
    for a, b in zip(full, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"])
    loaded = load_model(tmp_path / "full")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    assert full[-1]["margin"] > full[0]["margin"]
