"""The eval gate: the candidate and the current version on the same held-out problems, greedy,
through the same agent loop and sandbox as users; plus the golden prompts the hot swap checks.

The decision is a paired non-inferiority test. For each held-out problem both versions are
right or wrong, so the comparison is paired: ``wins`` = problems only the candidate solves,
``losses`` = problems only the current version solves, and the accuracy difference is
``(wins - losses) / n``. Promote only when all of these hold:

1. at least ``min_problems`` held-out problems were evaluated (fewer cannot tell versions apart);
2. there is something to compare: at least one problem differs, or the accuracy is above zero
   (0% against 0% on the same problems says nothing about the candidate);
3. non-inferiority at margin ``tolerance``: the one-sided ``1 - alpha`` lower confidence bound of
   the accuracy difference (candidate - current) is at least ``-tolerance``. The bound is the
   ``alpha`` quantile of the paired bootstrap distribution (problems resampled with
   replacement, both versions' results kept together), computed exactly rather than by random
   resampling: the resampled wins and losses are multinomial, so the decision is reproducible
   and needs no random seed. (Hand-written because no statistics package is a dependency; it
   is a few lines of log-space binomial arithmetic.)
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from pydantic import BaseModel, Field

from agent.datasets import Problem
from agent.engines.base import Engine, GenerationRequest
from agent.evaluate import EvalReport, ProblemOutcome, evaluate
from agent.loop import Sandbox
from agent.solver import Solver, SolverSettings
from trainer.registry import GoldenPrompt

GOLDEN_PROMPTS = 3
GOLDEN_TOKENS = 32
_NEGLIGIBLE = 1e-15  # bootstrap terms below this probability are skipped (their sum is far below alpha)


class GateResult(BaseModel):
    current_version: str
    accuracy_current: float
    accuracy_candidate: float
    tolerance: float = Field(description="non-inferiority margin: the candidate may be this much worse at most")
    n: int
    promoted: bool
    reason: str
    wins: int = Field(0, description="held-out problems only the candidate solved")
    losses: int = Field(0, description="held-out problems only the current version solved")
    lower_bound: float | None = Field(None, description="one-sided 1 - alpha lower bound of accuracy(candidate) - "
                                      "accuracy(current), paired bootstrap")
    alpha: float = 0.05
    min_problems: int = 0
    forced: bool = Field(False, description="refused by the test but promoted because the request said "
                         "force_promote")


def paired_counts(current: EvalReport, candidate: EvalReport) -> tuple[int, int]:
    """(wins, losses) of the candidate over the problems both reports share."""
    before = {o.problem_id: o.greedy_correct for o in current.outcomes}
    wins = losses = 0
    for o in candidate.outcomes:
        if o.problem_id not in before:
            continue
        wins += int(o.greedy_correct and not before[o.problem_id])
        losses += int(before[o.problem_id] and not o.greedy_correct)
    return wins, losses


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def bootstrap_lower_bound(n: int, wins: int, losses: int, alpha: float) -> float:
    """The ``alpha`` quantile of (wins* - losses*) / n when the n paired outcomes are resampled
    with replacement: discordant draws M* ~ Binomial(n, (wins + losses) / n) and, given M*,
    losses* ~ Binomial(M*, losses / (wins + losses)); the difference is M* - 2 losses*."""
    if n <= 0:
        return -1.0
    discordant = wins + losses
    if discordant == 0:
        return 0.0
    mass: dict[int, float] = {}
    q = losses / discordant
    for m in range(n + 1):
        log_m = _log_binom_pmf(m, n, discordant / n)
        if log_m < math.log(_NEGLIGIBLE):
            continue
        for a in range(m + 1):
            log_p = log_m + _log_binom_pmf(a, m, q)
            if log_p >= math.log(_NEGLIGIBLE):
                mass[m - 2 * a] = mass.get(m - 2 * a, 0.0) + math.exp(log_p)
    total = 0.0
    for d in sorted(mass):
        total += mass[d]
        if total >= alpha:
            return d / n
    return max(mass) / n


def decide(current_version: str, current: EvalReport, candidate: EvalReport, tolerance: float, *,
           min_problems: int = 1, alpha: float = 0.05, force: bool = False) -> GateResult:
    """The gate's decision and every number behind it (see the module docstring)."""
    n = candidate.n
    wins, losses = paired_counts(current, candidate)
    acc_cur, acc_cand = current.greedy_accuracy, candidate.greedy_accuracy
    lower = bootstrap_lower_bound(n, wins, losses, alpha) if n else None
    numbers = (f"candidate {acc_cand:.3f} vs current {acc_cur:.3f} on {n} held-out problems ({wins} won, "
               f"{losses} lost)")
    if n < min_problems:
        promoted, why = False, f"refused: {numbers}; the gate needs at least {min_problems} problems"
    elif wins + losses == 0 and acc_cur == 0.0:
        promoted, why = False, f"refused: {numbers}; both solve none of them: nothing shows the candidate works"
    elif lower is None or lower < -tolerance:
        promoted, why = False, (f"refused: {numbers}; the {1 - alpha:.0%} lower bound of the difference "
                                f"{lower if lower is not None else float('nan'):+.3f} is below -{tolerance:g} "
                                "(the candidate may be worse by more than the margin)")
    else:
        promoted, why = True, (f"promoted: {numbers}; the {1 - alpha:.0%} lower bound of the difference "
                               f"{lower:+.3f} >= -{tolerance:g} (not worse by more than the margin)")
    forced = force and not promoted
    if forced:
        why += "; promoted anyway: the request said force_promote"
    return GateResult(
        current_version=current_version, accuracy_current=acc_cur, accuracy_candidate=acc_cand, tolerance=tolerance,
        n=n, promoted=promoted or forced, reason=why, wins=wins, losses=losses, lower_bound=lower, alpha=alpha,
        min_problems=min_problems, forced=forced,
    )


async def evaluate_engine(
    engine: Engine, sandbox: Sandbox, problems: Sequence[Problem], *, dataset: str, settings: SolverSettings,
    concurrency: int, on_done: Callable[[int, int], Coroutine[Any, Any, None]] | None = None,
    on_outcome: Callable[[ProblemOutcome], Awaitable[None] | None] | None = None, revisions: int = 0,
) -> EvalReport:
    """Greedy accuracy of ``engine`` on ``problems`` (trajectories are not logged: held-out data),
    and with ``revisions`` > 0 also after that many greedy self-revisions.
    ``on_done(done, total)`` after each problem; ``on_outcome(outcome)`` with each problem's result
    (called in finishing order; an awaitable it returns is awaited, in that order, before the end)."""
    import asyncio

    solver = Solver(engine, sandbox, None, settings)
    loop = asyncio.get_running_loop()
    count = 0
    pending: set[asyncio.Future[Any]] = set()

    def keep(awaitable: Awaitable[Any] | None) -> None:
        if awaitable is not None:
            task = asyncio.ensure_future(awaitable, loop=loop)
            pending.add(task)
            task.add_done_callback(pending.discard)

    def done(outcome: ProblemOutcome) -> None:
        nonlocal count
        count += 1
        if on_outcome is not None:
            keep(on_outcome(outcome))
        if on_done is not None:
            keep(on_done(count, len(problems)))

    try:
        report = await evaluate(solver, problems, dataset=dataset, concurrency=concurrency, on_done=done,
                                revisions=revisions)
    except BaseException:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # none left pending behind us
        raise
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
