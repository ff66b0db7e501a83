"""Evaluation: greedy accuracy and maj@k over a problem set, through the same solver as users.

Problems run concurrently (the engine batches their generation). Each solve's trajectories go
to the trajectory log (source ``eval``) and, when a path is given, to a JSONL file as they
finish, so an interrupted run keeps what it did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from agent.datasets import Problem
from agent.events import SolveResult
from agent.solver import Solver
from agent.trajectory import Mode, Source


class ProblemOutcome(BaseModel):
    problem_id: str
    gold: str
    greedy_answer: str | None
    greedy_correct: bool
    maj_answer: str | None = None
    maj_correct: bool | None = None
    top_share: float | None = None
    revised_answer: str | None = Field(None, description="the greedy answer after the revisions, when asked for")
    revised_correct: bool | None = None


class EvalReport(BaseModel):
    dataset: str
    n: int
    mode: Mode
    samples: int
    greedy_accuracy: float
    maj_accuracy: float | None = Field(None, description="maj@k when samples > 1")
    revisions: int = Field(0, description="self-revisions after each greedy answer (SRPO's revision prompt)")
    revised_accuracy: float | None = Field(None, description="greedy accuracy after the revisions, when revisions > 0")
    tool_call_rate: float = Field(description="share of greedy trajectories with at least one tool call")
    elapsed_s: float
    engine: str | None = Field(None, description="the engine that generated (vllm or transformers; set by the caller)")
    trajectories_path: str | None = None
    outcomes: list[ProblemOutcome]


def _mode_for(problem: Problem, mode: Mode) -> Mode:
    return Mode.arc if problem.mode is Mode.arc else mode


async def evaluate(
    solver: Solver,
    problems: Sequence[Problem],
    *,
    dataset: str,
    mode: Mode = Mode.tir,
    samples: int = 1,
    concurrency: int = 8,
    out_path: Path | None = None,
    seed: int = 0,
    on_done: Callable[[ProblemOutcome], None] | None = None,
    revisions: int = 0,
) -> EvalReport:
    """Greedy (and, with ``samples`` > 1, maj@k at the solver's sampling temperature) accuracy.
    ``revisions`` > 0: the greedy answer is revised that many times, greedily, with the SRPO
    revision prompt; the outcome holds both the first answer and the last revision's."""
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(concurrency)
    out = open(out_path, "a", encoding="utf-8") if out_path is not None else None  # noqa: SIM115
    tool_calls = 0

    def write(result: SolveResult) -> None:
        if out is not None:
            for t in result.trajectories:
                out.write(t.model_dump_json() + "\n")
            out.flush()

    async def one(i: int, p: Problem) -> ProblemOutcome:
        nonlocal tool_calls
        m = _mode_for(p, mode)
        async with sem:
            greedy = await solver.solve(p.problem, gold=p.gold, mode=m, source=Source.eval, problem_id=p.id,
                                        revisions=revisions)
            write(greedy)
            first = next(t for t in greedy.trajectories if t.parent_id is None)  # the answer before any revision
            tool_calls += int(first.n_tool_calls > 0)
            outcome = ProblemOutcome(
                problem_id=p.id, gold=p.gold, greedy_answer=first.answer, greedy_correct=bool(first.correct)
            )
            if revisions:
                outcome.revised_answer, outcome.revised_correct = greedy.answer, bool(greedy.correct)
            if samples > 1:
                maj = await solver.solve(
                    p.problem, gold=p.gold, mode=m, samples=samples, source=Source.eval, problem_id=p.id,
                    seed=seed + 1000 * i,
                )
                write(maj)
                outcome.maj_answer, outcome.maj_correct = maj.answer, bool(maj.correct)
                outcome.top_share = maj.vote.top_share if maj.vote else None
        if on_done is not None:
            on_done(outcome)
        return outcome

    try:
        outcomes = await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))
    finally:
        if out is not None:
            out.close()
    n = len(outcomes)
    return EvalReport(
        dataset=dataset,
        n=n,
        mode=mode,
        samples=samples,
        greedy_accuracy=sum(o.greedy_correct for o in outcomes) / n if n else 0.0,
        maj_accuracy=(sum(bool(o.maj_correct) for o in outcomes) / n if n else 0.0) if samples > 1 else None,
        revisions=revisions,
        revised_accuracy=(sum(bool(o.revised_correct) for o in outcomes) / n if n else 0.0) if revisions else None,
        tool_call_rate=tool_calls / n if n else 0.0,
        elapsed_s=time.perf_counter() - t0,
        trajectories_path=str(out_path) if out_path is not None else None,
        outcomes=list(outcomes),
    )
