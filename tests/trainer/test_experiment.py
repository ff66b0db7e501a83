"""``mathagent experiment``: the comparison rows run end to end (tiny random model, real sandbox,
real training subprocess, real registry), a rerun redoes nothing, another config is refused, a
budget skips rows with the reason; plus the bootstrap interval."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from mathagent.cli import app
from trainer.experiment_report import RowResult, bootstrap_ci, plot_all_logps


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
    from support.sandbox_service import running_sandbox

    from trainer.registry import Registry

    _env(monkeypatch, tmp_path, tiny_model)
    run_dir = tmp_path / "run"
    args = ["experiment", "irpo", "--model", str(tiny_model), "--max-turns", "1", "--max-new-tokens", "16", "--levels", "1-2", "--train-limit", "2",
            "--eval-limit", "2", "--samples", "2", "--maj-k", "2", "--pairs-k", "2", "--max-steps", "1",
            "--warmup-epochs", "3", "--batch-size", "2", "--max-length", "512", "--lr", "1e-4", "--run-dir", str(run_dir)]

    async def main() -> object:
        async with running_sandbox(tmp_path / "sbx"):
            return await asyncio.to_thread(CliRunner().invoke, app, args)

    result = asyncio.run(main())
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    summary = {r["name"]: r for r in json.loads((run_dir / "summary.json").read_text())}
    done = {k for k, r in summary.items() if r["status"] == "done"}
    assert done == {"zero_shot", "zero_shot_cot", "sft_gold", "sft_gold_vote", "dpo_1", "dpo_nll_1", "dpo_nll_2", "dpo_nll_3",
                    "dpo_nll_3_vote", "dpo_nll_1_revise", "srpo_1"}, summary
    # the random model is never right and never answers: nothing for STaR to imitate, no vote for ScPO
    assert summary["star"]["status"] == "skipped" and "no correct sample" in summary["star"]["reason"]
    assert summary["star"]["pair_counts"]["samples"] == 4 and summary["star"]["pair_counts"]["correct"] == 0
    assert summary["scpo_1"]["status"] == "skipped" and "unanimous_or_no_answer" in summary["scpo_1"]["reason"]
    zs = summary["zero_shot"]
    # the tiny random model solves nothing: accuracy 0 with a degenerate interval, on the 2 held-out problems
    assert zs["greedy"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 2} and zs["maj_k"] == 2
    # the chain-of-thought zero-shot row asks the same held-out problems with IRPO's prompt, no tool
    cot = json.loads((run_dir / "rows" / "zero_shot_cot" / "eval.json").read_text())
    assert cot["mode"] == "cot" and cot["n"] == 2 and summary["zero_shot_cot"]["tool_call_rate"] == 0.0
    assert "zero-shot, chain of thought maj@2" in result.output  # type: ignore[attr-defined]
    # the vote rows measure maj@k of a trained model; their greedy pass repeats the start row's exactly
    for vote, of in (("sft_gold_vote", "sft_gold"), ("dpo_nll_3_vote", "dpo_nll_3")):
        assert summary[vote]["start"] == summary[of]["version"] and summary[vote]["maj"]["n"] == 2
        assert summary[vote]["greedy"] == summary[of]["greedy"] and summary[vote]["version"] is None
    assert "SFT on gold (warm-up) maj@2" in result.output  # type: ignore[attr-defined]
    # warm-up trained on the 2 gold trajectories; DPO rows start from it and pair gold (winner) vs samples
    assert summary["sft_gold"]["pairs"] == 2 and summary["sft_gold"]["train_steps"] == 1
    warm = summary["sft_gold"]["version"]
    for name in ("dpo_1", "dpo_nll_1"):
        row = summary[name]
        assert row["start"] == warm and row["pairs"] > 0 and row["pair_counts"]["gold_added"] == 2
        assert row["train_steps"] == 1 and row["greedy"]["n"] == 2
    # iterations 2 and 3 continue the previous iteration's model, from fresh rollouts of it
    assert summary["dpo_nll_2"]["start"] == summary["dpo_nll_1"]["version"]
    assert summary["dpo_nll_3"]["start"] == summary["dpo_nll_2"]["version"]
    assert {p.name for p in (run_dir / "shared").glob("rollouts-*.jsonl")} == {
        f"rollouts-{warm}-it1.jsonl", f"rollouts-{summary['dpo_nll_1']['version']}-it2.jsonl",
        f"rollouts-{summary['dpo_nll_2']['version']}-it3.jsonl"}
    reg = Registry(run_dir / "registry")
    manifests = {m.training_config["row"]: m for m in reg.manifests()}
    assert set(manifests) == {"sft_gold", "dpo_1", "dpo_nll_1", "dpo_nll_2", "dpo_nll_3", "srpo_1"}
    assert manifests["dpo_1"].parent == warm and manifests["dpo_nll_1"].training_config["train"]["loss"] == "dpo+nll"
    # --warmup-epochs reaches the warm-up's training only
    assert manifests["sft_gold"].training_config["train"]["epochs"] == 3
    assert manifests["dpo_1"].training_config["train"]["epochs"] == 1
    assert manifests["dpo_nll_3"].parent == summary["dpo_nll_2"]["version"]
    assert manifests["dpo_nll_3"].training_config["lineage_iteration"] == 3
    assert manifests["dpo_nll_3"].training_config["train"]["ref_model"] is None  # reference = the start policy
    assert reg.active() is None  # an experiment never changes what is served
    # the trained weights live only in the registry; the curves stay and are plotted
    assert not (run_dir / "rows" / "dpo_1" / "train" / "model.safetensors").exists()
    assert (run_dir / "rows" / "dpo_1" / "train" / "curves.jsonl").is_file()
    assert {p.name for p in (run_dir / "plots").glob("*.png")} == {
        "sft_gold.png", "dpo_1.png", "dpo_nll_1.png", "dpo_nll_2.png", "dpo_nll_3.png", "srpo_1.png", "logps.png"}
    out = result.output  # type: ignore[attr-defined]
    assert "DPO+NLL (IRPO) it.3" in out and "maj@2" in out and "skipped" in out
    # SRPO: revision pairs from the warm-up's rollouts (each wrong sample revised into the gold solution),
    # the SRPO loss at its own convex weight, and greedy answers measured with 0 and 2 revisions, as for
    # the untrained reviser (the DPO+NLL it.1 model)
    srpo = summary["srpo_1"]
    assert srpo["start"] == warm and srpo["pairs"] > 0 and srpo["pair_counts"]["gold_added"] == 2
    assert manifests["srpo_1"].training_config["train"]["loss"] == "srpo"
    assert manifests["srpo_1"].training_config["train"]["alpha"] == 0.8
    for name in ("srpo_1", "dpo_nll_1_revise"):
        assert summary[name]["revisions"] == 2 and summary[name]["revised"]["n"] == 2
        assert set(summary[name]["revised_by_problem"]) == set(summary[name]["greedy_by_problem"])
    assert summary["dpo_nll_1_revise"]["start"] == summary["dpo_nll_1"]["version"]
    assert summary["dpo_nll_1_revise"]["greedy"] == summary["dpo_nll_1"]["greedy"]
    paired = {(c["lower_row"], c["higher_row"]) for c in json.loads((run_dir / "paired.json").read_text())}
    assert {("dpo_nll_1_revise", "srpo_1"), ("srpo_1", "srpo_1"), ("dpo_1", "dpo_nll_1")} <= paired
    assert "SRPO it.1 + 2 revisions" in out

    # the same command again: every finished row is read back, nothing reruns (no sandbox is running now)
    stamps = {p.name: p.stat().st_mtime_ns for p in (run_dir / "rows").glob("*.json")}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "rows").glob("*.json")} == stamps
    assert len(Registry(run_dir / "registry").manifests()) == 6

    # another config in the same run directory is refused with the differing field
    other = CliRunner().invoke(app, [*args[:-2], "--seed", "1", "--run-dir", str(run_dir)])
    assert other.exit_code == 2 and "differs in: seed" in other.output


def test_budget_skips_rows_with_the_reason(tmp_path, tiny_model, monkeypatch):
    _env(monkeypatch, tmp_path, tiny_model)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["experiment", "mdpo", "--model", str(tiny_model), "--train-limit", "2",
                                      "--eval-limit", "2", "--samples", "2", "--budget-minutes", "0", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = {r["name"]: r for r in json.loads((run_dir / "summary.json").read_text())}
    assert summary["zero_shot"]["status"] == "skipped" and "0s of the budget left" in summary["zero_shot"]["reason"]
    assert summary["mdpo_1"]["status"] == "skipped" and "warm-up" in summary["mdpo_1"]["reason"]
    assert summary["mdpo_2_prev"]["status"] == "skipped" and "starts from row mdpo_1" in summary["mdpo_2_prev"]["reason"]
    assert not list(run_dir.glob("rows/*.json"))  # nothing recorded: a rerun with a budget does every row
    # the papers' orderings among the mdpo rows are listed, each unavailable with the reason
    paired = {(c["lower_row"], c["higher_row"]): c for c in json.loads((run_dir / "paired.json").read_text())}
    assert ("raft", "mdpo_1") in paired and ("mdpo_2_fixed", "mdpo_2_prev") in paired
    assert ("dpo_1", "dpo_nll_1") not in paired  # an irpo claim: its rows are not in this family
    assert paired[("raft", "mdpo_1")]["comparison"] is None
    assert paired[("raft", "mdpo_1")]["unavailable"] == ("raft skipped (starts from the warm-up row, not done); "
                                                         "mdpo_1 skipped (starts from the warm-up row, not done)")
    assert "unavailable: raft skipped" in " ".join(result.output.split())
    bad = CliRunner().invoke(app, ["experiment", "ppo", "--run-dir", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "family" in bad.output
    bad = CliRunner().invoke(app, ["experiment", "mdpo", "--rows", "mdpo_1,dpo_9", "--run-dir", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown row dpo_9" in bad.output and "mdpo_2_fixed" in bad.output
    bad = CliRunner().invoke(app, ["experiment", "mdpo", "--scale", "tpu", "--run-dir", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--scale" in bad.output


def test_bootstrap_interval():
    acc = bootstrap_ci([True] * 30 + [False] * 70, seed=1)
    assert acc.value == pytest.approx(0.3) and acc.n == 100
    assert 0.19 < acc.low < 0.3 < acc.high < 0.41  # about +-9 points at n=100
    assert bootstrap_ci([True, True], seed=0).model_dump() == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 2}
    assert bootstrap_ci([]).n == 0


def test_combined_plot_gives_each_row_its_own_colour_and_one_legend_entry():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [{"step": s, "logps_chosen": -1.0 * s, "logps_rejected": -2.0 * s} for s in (1, 2)]
    curves = [(RowResult(name=f"r{i}", label=f"row {i}", status="done", loss="dpo"), recs) for i in range(11)]
    fig, ax = plt.subplots()
    sft = RowResult(name="sft", label="sft", status="done", loss="sft")  # no rejected sequences: one line
    plot_all_logps(ax, [*curves, (sft, recs)])
    lines = ax.get_lines()
    assert len(lines) == 23
    colours = [matplotlib.colors.to_hex(ln.get_color()) for ln in lines]
    assert all(colours[2 * i] == colours[2 * i + 1] for i in range(11))  # chosen and rejected of a row
    assert len(set(colours)) == 12  # the default cycle would repeat after ten
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"row {i}" for i in range(11)] + ["sft"]
    plt.close(fig)


@pytest.mark.slow
def test_budget_ending_inside_a_row_cancels_it_and_keeps_going(tmp_path, tiny_model, monkeypatch):
    _env(monkeypatch, tmp_path, tiny_model)  # no sandbox at the URL: the run starts an ephemeral one
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["experiment", "irpo", "--model", str(tiny_model), "--train-limit", "2",
                                      "--max-turns", "1", "--max-new-tokens", "16", "--eval-limit", "40", "--maj-k", "8", "--budget-minutes", "0.05",
                                      "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = {r["name"]: r for r in json.loads((run_dir / "summary.json").read_text())}
    assert summary["zero_shot"]["status"] == "skipped"
    assert "budget ran out after" in summary["zero_shot"]["reason"], summary["zero_shot"]
    assert summary["sft_gold"]["status"] == "skipped" and "0s of the budget left" in summary["sft_gold"]["reason"]
    assert not list(run_dir.glob("rows/*.json"))


def _solved_rollouts(path, tokenizer) -> None:
    """Rewrite a rollouts file as if the model had solved every problem in two different ways and
    failed it once (a tiny random model never does): each record's samples become two correct
    tool trajectories with distinct text and one with a wrong final answer, rendered from the
    record's gold trajectory. Stands in for a capable model so the rows that need correct samples
    (RAFT, STaR), pairs after M-DPO's filters, or a majority vote (ScPO) have data."""
    import re

    from agent.trajectory import Source
    from trainer.gold import gold_trajectory
    from trainer.rollouts import RolloutRecord

    records = [RolloutRecord.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
    assert records and all(r.gold is not None for r in records)
    out = []
    for r in records:
        g = r.gold
        first, obs = g.segments[1].text, g.segments[2].text
        code = re.search(r"```python\n(.*?)\n```", first, re.S).group(1)  # type: ignore[union-attr]
        output = obs.removeprefix("```output\n").removesuffix("\n```\n")
        common = dict(prompt_ids=g.segments[0].token_ids, prompt_text=g.segments[0].text, problem=g.problem,
                      problem_id=g.problem_id, mode=g.mode, code=code, code_output=output)
        right = [gold_trajectory(tokenizer, solution=s, gold=g.gold, **common)
                 for s in ("Let me compute this with Python.", "Python will do the arithmetic.")]
        wrong = gold_trajectory(tokenizer, solution="A guess.", gold=f"{g.gold}1", **common)
        assert right[0].n_tool_calls == 1  # the gold run is recorded as the trajectory's tool call
        samples = [t.model_copy(update={"source": Source.rollout}) for t in right]
        samples.append(wrong.model_copy(update={"source": Source.rollout, "gold": g.gold, "correct": False}))
        out.append(r.model_copy(update={"trajectories": samples}).model_dump_json())
    path.write_text("\n".join(out) + "\n")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mdpo_rows_fixed_vs_previous_reference_raft_and_scpo(tmp_path, tiny_model, tokenizer, monkeypatch):
    """The M-DPO family's rows that need a model which sometimes succeeds, fed rollouts edited to
    contain successes; the second iteration with a reference fixed at the warm-up model starts
    away from log 2, the one with the previous iteration as reference exactly at it."""
    import math

    from support.sandbox_service import running_sandbox

    from trainer.registry import Registry

    _env(monkeypatch, tmp_path, tiny_model)
    run_dir = tmp_path / "run"
    base = ["experiment", "mdpo", "--model", str(tiny_model), "--max-turns", "1", "--max-new-tokens", "16", "--levels", "1", "--train-limit", "2", "--eval-limit",
            "1", "--samples", "2", "--max-steps", "1", "--batch-size", "2", "--max-length", "512", "--lr", "1e-3",
            "--epochs", "2", "--run-dir", str(run_dir)]

    def run(rows: str) -> dict[str, dict]:
        async def main() -> object:
            async with running_sandbox(tmp_path / "sbx"):
                return await asyncio.to_thread(CliRunner().invoke, app, [*base, "--rows", rows])

        result = asyncio.run(main())
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        return {r["name"]: r for r in json.loads((run_dir / "summary.json").read_text())}

    summary = run("sft_gold,mdpo_1")
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2
    warm = summary["sft_gold"]["version"]
    # the random model's samples never call the tool: M-DPO's filters leave nothing
    assert summary["mdpo_1"]["status"] == "skipped" and "no_tool_call" in summary["mdpo_1"]["reason"]
    assert summary["zero_shot"]["reason"] == "not selected (--rows)"
    _solved_rollouts(run_dir / "shared" / f"rollouts-{warm}-it1.jsonl", tokenizer)

    summary = run("raft,mdpo_1,scpo_1,mdpo_2_prev")
    for name in ("raft", "mdpo_1", "scpo_1"):
        assert summary[name]["status"] == "done" and summary[name]["start"] == warm, summary[name]
    assert summary["raft"]["pairs"] == 4 and summary["raft"]["pair_counts"]["correct"] == 4  # 2 problems x 2 right
    assert summary["mdpo_1"]["pairs"] == 2  # one random right/wrong pair per problem
    scpo = [json.loads(line) for line in (run_dir / "rows" / "scpo_1" / "pairs.jsonl").read_text().splitlines()]
    assert len(scpo) == 2 and all(p["weight"] == pytest.approx(1 / 3) for p in scpo)  # votes 2 vs 1 of k=3
    it1 = summary["mdpo_1"]["version"]
    assert summary["mdpo_2_prev"]["status"] == "skipped" and "no_tool_call" in summary["mdpo_2_prev"]["reason"]
    _solved_rollouts(run_dir / "shared" / f"rollouts-{it1}-it2.jsonl", tokenizer)

    summary = run("mdpo_2_fixed,mdpo_2_prev")
    fixed, prev = summary["mdpo_2_fixed"], summary["mdpo_2_prev"]
    assert fixed["status"] == prev["status"] == "done" and fixed["start"] == prev["start"] == it1
    # same start, same pairs; only the reference differs: the policy equals its previous-iteration
    # reference at step 1 (DPO loss log 2), not the fixed warm-up reference
    assert prev["loss_first"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(fixed["loss_first"] - math.log(2)) > 1e-3
    manifests = {m.training_config["row"]: m for m in Registry(run_dir / "registry").manifests()}
    reg = Registry(run_dir / "registry")
    assert manifests["mdpo_2_fixed"].training_config["reference"] == warm
    assert manifests["mdpo_2_fixed"].training_config["train"]["ref_model"] == str(reg.path(warm))
    assert manifests["mdpo_2_prev"].training_config["reference"] == "start"
    assert manifests["mdpo_2_prev"].parent == it1 and manifests["mdpo_2_prev"].training_config["lineage_iteration"] == 2
