"""A tiny random model trained on synthetic pairs: curves, parameters, checkpoint, LoRA, resume."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.config import TrainConfig
from trainer.pairs import irpo_pairs
from trainer.train import train


@pytest.fixture(scope="module")
def pairs(make_traj):
    """Chosen and rejected differ in one token in the middle (similar responses: the setting of
    IRPO's Figure 2), with an observation segment that must stay out of the loss."""
    g = torch.Generator().manual_seed(1)

    def rand(n):
        return torch.randint(100, 3000, (n,), generator=g).tolist()

    trajs = []
    for i in range(8):
        prompt, x, obs = rand(12), rand(16), rand(5)
        y = list(x)
        y[8] = rand(1)[0]
        trajs.append(make_traj(f"p{i}", [("p", prompt), ("m", x[:4]), ("o", obs), ("m", [*x[4:], 2])], correct=True))
        trajs.append(make_traj(f"p{i}", [("p", prompt), ("m", y[:4]), ("o", obs), ("m", [*y[4:], 2])], correct=False))
    return irpo_pairs(trajs, k=1).pairs


def run(tmp_path, name, tokenizer, pairs, **kw):
    from agent.modelstore import tiny_random_model

    model = tiny_random_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = dict(pairs=tmp_path / "unused.jsonl", out=tmp_path / name, lr=1e-3, epochs=12, per_device_batch_size=4,
                warmup_ratio=0.0, progress=False)
    opts.update(kw)
    result = train(TrainConfig(**opts), model=model, tokenizer=tokenizer, pairs=pairs)
    curves = [json.loads(line) for line in (tmp_path / name / "curves.jsonl").read_text().splitlines()]
    return model, before, result, curves


@pytest.mark.slow
def test_dpo_nll_raises_chosen_logprob_while_dpo_alone_does_not(tmp_path, tokenizer, pairs):
    from agent.modelstore import load_model

    model, before, result, nll = run(tmp_path, "nll", tokenizer, pairs, loss="dpo+nll", alpha=1.0)
    _, _, _, dpo = run(tmp_path, "dpo", tokenizer, pairs, loss="dpo")
    assert result.steps == len(nll) == 24
    for curve in (nll, dpo):
        assert curve[-1]["margin"] > curve[0]["margin"] + 0.1  # the margin grows
        assert curve[-1]["accuracy"] == 1.0
    rise_nll = nll[-1]["logps_chosen"] - nll[0]["logps_chosen"]
    rise_dpo = dpo[-1]["logps_chosen"] - dpo[0]["logps_chosen"]
    n_tokens = 17  # model tokens of each chosen sequence
    assert rise_nll > 0.5 * n_tokens  # chosen rises by more than 0.5 nat per token with the NLL term
    assert rise_dpo < 0.25 * rise_nll and rise_dpo < 0.2 * n_tokens  # ~flat without it (tiny random model)
    # every trainable parameter changed
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []
    # a loadable HF checkpoint with the trained weights
    loaded = load_model(tmp_path / "nll")
    ids = torch.tensor([pairs[0].chosen.input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)


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
