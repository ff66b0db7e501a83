"""The eval gate: the candidate and the current version on the same held-out problems, greedy,
through the same agent loop and sandbox as users; promote only if the candidate's accuracy is
at least the current one's minus a tolerance. Plus the golden prompts the hot swap checks.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pydantic import BaseModel

from agent.datasets import Problem
from agent.engines.base import Engine, GenerationRequest
from agent.evaluate import EvalReport, evaluate
from agent.loop import Sandbox
from agent.solver import Solver, SolverSettings
from trainer.registry import GoldenPrompt

GOLDEN_PROMPTS = 3
GOLDEN_TOKENS = 32


class GateResult(BaseModel):
    current_version: str
    accuracy_current: float
    accuracy_candidate: float
    tolerance: float
    n: int
    promoted: bool
    reason: str


def decide(current_version: str, current: EvalReport, candidate: EvalReport, tolerance: float) -> GateResult:
    promoted = candidate.greedy_accuracy >= current.greedy_accuracy - tolerance
    verdict = ">=" if promoted else "<"
    return GateResult(
        current_version=current_version, accuracy_current=current.greedy_accuracy,
        accuracy_candidate=candidate.greedy_accuracy, tolerance=tolerance, n=candidate.n, promoted=promoted,
        reason=(f"candidate {candidate.greedy_accuracy:.3f} {verdict} current {current.greedy_accuracy:.3f} - "
                f"tolerance {tolerance:g} on {candidate.n} held-out problems"),
    )


async def evaluate_engine(
    engine: Engine, sandbox: Sandbox, problems: Sequence[Problem], *, dataset: str, settings: SolverSettings,
    concurrency: int, on_done: Callable[[int, int], Coroutine[Any, Any, None]] | None = None,
) -> EvalReport:
    """Greedy accuracy of ``engine`` on ``problems`` (trajectories are not logged: held-out data)."""
    import asyncio

    solver = Solver(engine, sandbox, None, settings)
    loop = asyncio.get_running_loop()
    count = 0
    pending: set[asyncio.Task[None]] = set()

    def done(_: object) -> None:
        nonlocal count
        count += 1
        if on_done is not None:
            task = loop.create_task(on_done(count, len(problems)))
            pending.add(task)
            task.add_done_callback(pending.discard)

    report = await evaluate(solver, problems, dataset=dataset, concurrency=concurrency, on_done=done)
    if pending:
        await asyncio.gather(*pending)
    return report


async def golden_prompts(engine: Engine, problems: Sequence[Problem], *, n: int = GOLDEN_PROMPTS,
                         max_new_tokens: int = GOLDEN_TOKENS) -> list[GoldenPrompt]:
    """The first ``n`` held-out problems as the agent's user message, with ``engine``'s greedy
    first ``max_new_tokens`` tokens (one request at a time: the hot swap checks one at a time)."""
    from agent import prompts

    out = []
    for p in problems[:n]:
        user = prompts.user_message(p.problem, p.mode)
        ids = engine.chat_prefix(prompts.messages(user))
        completion = (await engine.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=max_new_tokens)))[0]
        out.append(GoldenPrompt(prompt=user, expected=completion.text, max_new_tokens=max_new_tokens))
    return out
