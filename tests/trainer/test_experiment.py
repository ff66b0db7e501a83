"""``mathagent experiment``: the comparison rows run end to end (tiny random model, real sandbox,
real training subprocess, real registry), a rerun redoes nothing, another config is refused, a
budget skips rows with the reason; plus the bootstrap interval."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from agent.cli import app
from trainer.experiment_report import bootstrap_ci


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer):
    from agent.modelstore import tiny_random_model

    path = tmp_path_factory.mktemp("tiny")
    tiny_random_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _env(monkeypatch, tmp_path, tiny_model) -> None:
    env = {
        "MATHAGENT_STATE_DIR": str(tmp_path / "state"), "MATHAGENT_DEV": "1",
        "MATHAGENT_MAX_NEW_TOKENS": "12", "MATHAGENT_MAX_TURNS": "1",
        "MATHAGENT_SANDBOX_URL": f"unix://{tmp_path / 'sbx' / 'sandbox.sock'}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_irpo_rows_end_to_end_then_resume(tmp_path, tiny_model, monkeypatch):
    from sandbox.testing import running_sandbox
    from trainer.registry import Registry

    _env(monkeypatch, tmp_path, tiny_model)
    run_dir = tmp_path / "run"
    args = ["experiment", "irpo", "--model", str(tiny_model), "--levels", "1-2", "--train-limit", "2",
            "--eval-limit", "2", "--samples", "2", "--maj-k", "2", "--pairs-k", "2", "--max-steps", "1",
            "--batch-size", "2", "--max-length", "512", "--lr", "1e-4", "--run-dir", str(run_dir)]

    async def main() -> object:
        async with running_sandbox(tmp_path / "sbx"):
            return await asyncio.to_thread(CliRunner().invoke, app, args)

    result = asyncio.run(main())
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    summary = {r["name"]: r for r in json.loads((run_dir / "summary.json").read_text())}
    done = {k for k, r in summary.items() if r["status"] == "done"}
    assert done == {"zero_shot", "sft_gold", "dpo_1", "dpo_nll_1"}, summary
    assert {k for k, r in summary.items() if r["status"] == "not_implemented"} == {
        "star", "dpo_nll_2", "dpo_nll_3", "scpo_1"}
    zs = summary["zero_shot"]
    # the tiny random model solves nothing: accuracy 0 with a degenerate interval, on the 2 held-out problems
    assert zs["greedy"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 2} and zs["maj_k"] == 2
    # warm-up trained on the 2 gold trajectories; DPO rows start from it and pair gold (winner) vs samples
    assert summary["sft_gold"]["pairs"] == 2 and summary["sft_gold"]["train_steps"] == 1
    warm = summary["sft_gold"]["version"]
    for name in ("dpo_1", "dpo_nll_1"):
        row = summary[name]
        assert row["start"] == warm and row["pairs"] > 0 and row["pair_counts"]["gold_added"] == 2
        assert row["train_steps"] == 1 and row["greedy"]["n"] == 2
    reg = Registry(run_dir / "registry")
    manifests = {m.training_config["row"]: m for m in reg.manifests()}
    assert set(manifests) == {"sft_gold", "dpo_1", "dpo_nll_1"}
    assert manifests["dpo_1"].parent == warm and manifests["dpo_nll_1"].training_config["train"]["loss"] == "dpo+nll"
    assert reg.active() is None  # an experiment never changes what is served
    # the trained weights live only in the registry; the curves stay and are plotted
    assert not (run_dir / "rows" / "dpo_1" / "train" / "model.safetensors").exists()
    assert (run_dir / "rows" / "dpo_1" / "train" / "curves.jsonl").is_file()
    assert {p.name for p in (run_dir / "plots").glob("*.png")} == {"sft_gold.png", "dpo_1.png", "dpo_nll_1.png",
                                                                 "logps.png"}
    out = result.output  # type: ignore[attr-defined]
    assert "DPO+NLL (IRPO) it.1" in out and "maj@2" in out and "not_implemented" in out

    # the same command again: every finished row is read back, nothing reruns (no sandbox is running now)
    stamps = {p.name: p.stat().st_mtime_ns for p in (run_dir / "rows").glob("*.json")}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "rows").glob("*.json")} == stamps
    assert len(Registry(run_dir / "registry").manifests()) == 3

    # another config in the same run directory is refused with the differing field
    other = CliRunner().invoke(app, [*args[:-2], "--seed", "1", "--run-dir", str(run_dir)])
    assert other.exit_code == 2 and "differs in: seed" in other.output


def test_budget_skips_rows_with_the_reason(tmp_path, tiny_model, monkeypatch):
    _env(monkeypatch, tmp_path, tiny_model)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["experiment", "mdpo", "--model", str(tiny_model), "--train-limit", "2",
                                      "--eval-limit", "2", "--budget-minutes", "0", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = {r["name"]: r for r in json.loads((run_dir / "summary.json").read_text())}
    assert summary["zero_shot"]["status"] == "skipped" and "0s of the budget left" in summary["zero_shot"]["reason"]
    assert summary["mdpo_1"]["status"] == "skipped" and "warm-up" in summary["mdpo_1"]["reason"]
    assert summary["mdpo_2_prev"]["status"] == "not_implemented"
    assert not list(run_dir.glob("rows/*.json"))  # nothing recorded: a rerun with a budget does every row
    bad = CliRunner().invoke(app, ["experiment", "ppo", "--run-dir", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "family" in bad.output


def test_bootstrap_interval():
    acc = bootstrap_ci([True] * 30 + [False] * 70, seed=1)
    assert acc.value == pytest.approx(0.3) and acc.n == 100
    assert 0.19 < acc.low < 0.3 < acc.high < 0.41  # about +-9 points at n=100
    assert bootstrap_ci([True, True], seed=0).model_dump() == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 2}
    assert bootstrap_ci([]).n == 0


@pytest.mark.slow
def test_budget_ending_inside_a_row_cancels_it_and_keeps_going(tmp_path, tiny_model, monkeypatch):
    _env(monkeypatch, tmp_path, tiny_model)  # no sandbox at the URL: the run starts an ephemeral one
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["experiment", "irpo", "--model", str(tiny_model), "--train-limit", "2",
                                      "--eval-limit", "40", "--maj-k", "8", "--budget-minutes", "0.05",
                                      "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = {r["name"]: r for r in json.loads((run_dir / "summary.json").read_text())}
    assert summary["zero_shot"]["status"] == "skipped"
    assert "budget ran out after" in summary["zero_shot"]["reason"], summary["zero_shot"]
    assert summary["sft_gold"]["status"] == "skipped" and "0s of the budget left" in summary["sft_gold"]["reason"]
    assert not list(run_dir.glob("rows/*.json"))
