"""Evaluation with self-revisions: each problem's greedy answer and its answer after k greedy
revisions, from one chain of episodes (scripted engine, no model)."""

from __future__ import annotations

from agent_scripted import ScriptedEngine

from agent.datasets import Problem
from agent.evaluate import evaluate
from agent.solver import Solver
from agent.trajectory import Mode


def _problems() -> list[Problem]:
    return [
        Problem(id="a", problem="2+3?", gold="5", dataset="t"),
        Problem(id="b", problem="3+3?", gold="6", dataset="t"),
    ]


async def test_revised_answers_are_measured_next_to_the_first_greedy_answer(tokenizer):
    # one problem at a time: a is wrong first and right after its revisions, b the other way round
    engine = ScriptedEngine(
        tokenizer,
        [
            "Final answer: 4",
            "Final answer: 5",
            "Final answer: 5",
            "Final answer: 6",
            "Final answer: 6",
            "Final answer: 7",
        ],
    )
    report = await evaluate(
        Solver(engine, None), _problems(), dataset="t", mode=Mode.cot, concurrency=1, revisions=2
    )
    a, b = report.outcomes
    assert (a.greedy_answer, a.greedy_correct, a.revised_answer, a.revised_correct) == ("4", False, "5", True)
    assert (b.greedy_answer, b.greedy_correct, b.revised_answer, b.revised_correct) == ("6", True, "7", False)
    assert report.revisions == 2 and report.greedy_accuracy == 0.5 and report.revised_accuracy == 0.5
    # greedy revisions, in the same chain as the first answer
    assert len(engine.requests) == 6 and all(r.temperature == 0.0 for r in engine.requests)
    assert not engine.script  # every scripted reply consumed: no separate greedy pass


async def test_without_revisions_nothing_is_revised(tokenizer):
    engine = ScriptedEngine(tokenizer, ["Final answer: 5", "Final answer: 7"])
    report = await evaluate(Solver(engine, None), _problems(), dataset="t", mode=Mode.cot, concurrency=1)
    assert [o.greedy_correct for o in report.outcomes] == [True, False]
    assert all(o.revised_correct is None for o in report.outcomes)
    assert report.revisions == 0 and report.revised_accuracy is None
