"""The papers' orderings tested paired on hand-made row results (trainer/experiment_claims.py),
and rows stored before per-problem results existed."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from trainer.experiment import ROWS, Experiment, experiment_config
from trainer.experiment_claims import CLAIMS, claims_table, evaluate_claims
from trainer.experiment_report import RowResult, bootstrap_ci, table

N = 40


def _row(
    name: str,
    solved: range | list[int],
    *,
    maj: range | list[int] | None = None,
    revised: range | list[int] | None = None,
    **kw: object,
) -> RowResult:
    """A done row that solved the held-out problems whose index is in ``solved`` (of p00..p39)
    (and ``maj``, ``revised``: those it solved by maj@4, after 2 revisions)."""
    greedy = {f"p{i:02d}": i in solved for i in range(N)}
    head: dict = dict(
        name=name,
        label=name.replace("_", " "),
        status="done",
        greedy=bootstrap_ci(list(greedy.values())),
        greedy_by_problem=greedy,
    )
    if maj is not None:
        m = {f"p{i:02d}": i in maj for i in range(N)}
        head.update(maj=bootstrap_ci(list(m.values())), maj_by_problem=m, maj_k=4)
    if revised is not None:
        r = {f"p{i:02d}": i in revised for i in range(N)}
        head.update(revised=bootstrap_ci(list(r.values())), revised_by_problem=r, revisions=2)
    return RowResult(**{**head, **kw})


def _render(results) -> str:
    out = io.StringIO()
    Console(file=out, width=250).print(claims_table(results, title="t"))
    return out.getvalue()


def test_every_claim_names_rows_of_one_family():
    for c in CLAIMS:
        assert any({c.lower, c.higher} <= {s.name for s in specs} for specs in ROWS.values()), c


def test_irpo_rows_give_the_irpo_claims_paired():
    rows = [
        _row("zero_shot", range(10), maj=range(12)),
        _row("sft_gold", range(20)),
        _row("star", range(21)),  # one problem more than SFT: not significant
        _row("dpo_1", range(0)),
        _row("dpo_nll_1", range(2, 32)),  # 11 more than STaR, loses 2 of STaR's: 2 vs 11 discordant
        _row("dpo_nll_2", range(34)),  # 0 vs 4 discordant
        _row("dpo_nll_3", range(34), status="skipped", reason="budget"),
        _row("sft_gold_vote", range(20), maj=range(20)),
    ]
    results = evaluate_claims(rows)
    shown = [(r.lower_row, r.higher_row) for r in results]
    # in CLAIMS order; M-DPO's claims need rows this run does not have, so they are not shown
    assert shown == [
        ("sft_gold", "star"),
        ("star", "dpo_nll_1"),
        ("dpo_1", "dpo_nll_1"),
        ("dpo_nll_1", "dpo_nll_2"),
        ("dpo_nll_2", "dpo_nll_3"),
        ("zero_shot", "zero_shot"),
        ("sft_gold_vote", "sft_gold_vote"),
    ]
    by = {(r.lower_row, r.higher_row): r for r in results}

    sft_star = by[("sft_gold", "star")].comparison
    assert sft_star is not None and (sft_star.only_a, sft_star.only_b, sft_star.n) == (0, 1, N)
    assert sft_star.p_value == 1.0 and not by[("sft_gold", "star")].holds

    star_nll = by[("star", "dpo_nll_1")]
    assert star_nll.comparison is not None
    assert (star_nll.comparison.only_a, star_nll.comparison.only_b) == (2, 11)
    # 2 * (1 + 13 + 78) / 2^13 = 184 / 8192
    assert star_nll.comparison.p_value == pytest.approx(184 / 8192)
    assert star_nll.comparison.difference == pytest.approx(9 / N) and star_nll.holds

    assert by[("dpo_1", "dpo_nll_1")].holds  # 0 vs 30
    it12 = by[("dpo_nll_1", "dpo_nll_2")]
    assert it12.relation == "<=" and it12.comparison is not None and not it12.holds
    assert it12.comparison.p_value == pytest.approx(2 / 16)  # 4 discordant, all one way: 2 * 1/2^4
    assert by[("dpo_nll_2", "dpo_nll_3")].comparison is None
    assert by[("dpo_nll_2", "dpo_nll_3")].unavailable == "dpo_nll_3 skipped (budget)"

    vote = by[("zero_shot", "zero_shot")]  # greedy vs maj@k of the same evaluation
    assert vote.lower == "zero shot" and vote.higher == "zero shot maj@4"
    assert vote.comparison is not None and vote.comparison.difference == pytest.approx(2 / N)
    same = by[("sft_gold_vote", "sft_gold_vote")].comparison
    assert same is not None and (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)

    text = _render(results)
    assert "star < dpo nll 1" in text and "+22.5" in text and "0.0225" in text and "2/11" in text
    assert "unavailable" in text and "dpo_nll_3 skipped (budget)" in text
    assert text.count("yes") == 2


def test_reversed_significant_difference_is_marked():
    results = evaluate_claims([_row("dpo_1", range(25)), _row("dpo_nll_1", range(5))])
    assert len(results) == 1 and not results[0].holds
    assert results[0].comparison is not None and results[0].comparison.difference == pytest.approx(-0.5)
    assert "no (reversed)" in _render(results)


def test_rows_without_per_problem_results_are_unavailable_not_an_error():
    old = RowResult(name="raft", label="RAFT", status="done", greedy=bootstrap_ci([True, False]))
    results = evaluate_claims([_row("sft_gold", range(20)), old, _row("mdpo_1", range(25))])
    by = {(r.lower_row, r.higher_row): r for r in results}
    assert set(by) == {("sft_gold", "raft"), ("raft", "mdpo_1")}
    for r in by.values():
        assert r.comparison is None and "raft: no per-problem results" in r.unavailable and not r.holds
    assert "unavailable" in _render(results)


def test_a_stored_row_without_per_problem_results_reads_them_from_its_eval_cache(tmp_path):
    from agent.evaluate import EvalReport, ProblemOutcome
    from agent.trajectory import Mode
    from trainer.settings import TrainerSettings

    run = Experiment(
        experiment_config("irpo", "cpu"), tmp_path / "run", TrainerSettings(state_dir=tmp_path / "state")
    )
    old = RowResult(name="sft_gold_vote", label="SFT", status="done", greedy=bootstrap_ci([True, False]))
    run.row_file("sft_gold_vote").parent.mkdir(parents=True, exist_ok=True)
    run.row_file("sft_gold_vote").write_text(old.model_dump_json())
    assert run.finished("sft_gold_vote") == old  # no cache: stays without per-problem results
    outcomes = [
        ProblemOutcome(problem_id="a", gold="1", greedy_answer="1", greedy_correct=True, maj_correct=False),
        ProblemOutcome(problem_id="b", gold="2", greedy_answer="3", greedy_correct=False, maj_correct=True),
    ]
    report = EvalReport(
        dataset="tasks",
        n=2,
        mode=Mode.tir,
        samples=4,
        greedy_accuracy=0.5,
        maj_accuracy=0.5,
        tool_call_rate=1.0,
        elapsed_s=1.0,
        outcomes=outcomes,
    )
    (run.row_dir("sft_gold_vote") / "eval.json").write_text(report.model_dump_json())
    row = run.finished("sft_gold_vote")
    assert row is not None
    assert row.greedy_by_problem == {"a": True, "b": False} and row.maj_by_problem == {"a": False, "b": True}


def test_srpo_claims_compare_the_answers_after_revisions():
    # the untrained reviser loses 2 of its 20; SRPO: 18 right first, 26 after its revisions
    rows = [
        _row("dpo_nll_1", range(20)),
        _row("dpo_nll_1_revise", range(20), revised=range(18), kind="revise"),
        _row("srpo_1", range(18), revised=range(26)),
    ]
    results = evaluate_claims(rows)
    by = {(r.lower, r.higher): r for r in results}
    assert list(by) == [
        ("dpo nll 1 revise + 2 revisions", "srpo 1 + 2 revisions"),
        ("srpo 1", "srpo 1 + 2 revisions"),
    ]
    for r in by.values():  # both: 0 vs 8 discordant, p = 2 / 2^8
        assert r.comparison is not None and (r.comparison.only_a, r.comparison.only_b) == (0, 8)
        assert r.comparison.p_value == pytest.approx(2 / 256) and r.holds
    # the main table: a revise row shows only its revised accuracy (its greedy one is its start row's)
    out = io.StringIO()
    Console(file=out, width=250).print(table(rows, title="t"))
    lines = [ln for ln in out.getvalue().splitlines() if "revis" in ln]
    assert len(lines) == 2 and "dpo nll 1 revise + 2 revisions" in lines[0] and "45.0" in lines[0]
    assert "srpo 1 + 2 revisions" in lines[1] and "65.0" in lines[1]
