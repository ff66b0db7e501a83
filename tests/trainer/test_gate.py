"""The eval gate's decision: a paired non-inferiority test on the same held-out problems, a
minimum number of problems, and no promotion on evidence of nothing (issue 19: the old gate
promoted a 0% candidate over a 0% current version on 2 problems)."""

from __future__ import annotations

import random

import pytest

from agent.evaluate import EvalReport, ProblemOutcome
from agent.trajectory import Mode
from trainer.gate import bootstrap_lower_bound, decide


def report(correct: list[bool]) -> EvalReport:
    outcomes = [ProblemOutcome(problem_id=f"p{i}", gold="1", greedy_answer="1" if ok else "0", greedy_correct=ok)
                for i, ok in enumerate(correct)]
    n = len(correct)
    return EvalReport(dataset="synthetic", n=n, mode=Mode.tir, samples=1, greedy_accuracy=sum(correct) / n if n else 0.0,
                      tool_call_rate=0.0, elapsed_s=0.0, outcomes=outcomes)


def test_a_tie_at_zero_is_not_promoted() -> None:
    """The finding: candidate 0.000 >= current 0.000 - tolerance 0 on 2 problems was promoted."""
    nothing = report([False, False])
    gate = decide("v0001", nothing, nothing, 0.0)  # default minimum: 1 problem; the zero tie alone refuses
    assert not gate.promoted and "solve none" in gate.reason
    assert (gate.n, gate.wins, gate.losses, gate.accuracy_current, gate.accuracy_candidate) == (2, 0, 0, 0.0, 0.0)
    many_zeros = report([False] * 40)
    assert not decide("v0001", many_zeros, many_zeros, 0.05, min_problems=20).promoted


def test_too_few_problems_are_refused_whatever_they_show() -> None:
    gate = decide("v0001", report([False, True]), report([True, True]), 0.05, min_problems=20)
    assert not gate.promoted and "at least 20 problems" in gate.reason and gate.min_problems == 20


def test_the_same_results_above_zero_are_promoted() -> None:
    same = report([True] * 12 + [False] * 20)
    gate = decide("v0001", same, same, 0.05, min_problems=20)
    assert gate.promoted and gate.lower_bound == 0.0 and "promoted" in gate.reason


def test_regressions_beyond_the_margin_are_refused_within_it_promoted() -> None:
    current = report([True] * 16 + [False] * 16)
    one_lost = report([False] + [True] * 15 + [False] * 16)  # 32 problems, 1 lost, none won
    refused = decide("v0001", current, one_lost, 0.05, min_problems=20)
    assert not refused.promoted and (refused.wins, refused.losses) == (0, 1)
    assert refused.lower_bound is not None and refused.lower_bound < -0.05 and "below -0.05" in refused.reason
    assert decide("v0001", current, one_lost, 0.1, min_problems=20).promoted  # a wider margin tolerates it
    better = report([False] + [True] * 15 + [True] * 5 + [False] * 11)  # 1 lost, 5 won
    gate = decide("v0001", current, better, 0.0, min_problems=20)
    assert gate.promoted and (gate.wins, gate.losses) == (5, 1) and gate.accuracy_candidate > gate.accuracy_current


def test_the_accuracy_alone_does_not_decide_the_pairing_does() -> None:
    """Same accuracy (50%), but on different problems: 10 won and 10 lost of 40 is too uncertain
    for a 5-point margin, while 50% on the same problems passes."""
    current = report([True] * 20 + [False] * 20)
    shuffled = report([True] * 10 + [False] * 10 + [True] * 10 + [False] * 10)
    gate = decide("v0001", current, shuffled, 0.05, min_problems=20)
    assert gate.accuracy_candidate == gate.accuracy_current == 0.5
    assert not gate.promoted and (gate.wins, gate.losses) == (10, 10)
    assert decide("v0001", current, current, 0.05, min_problems=20).promoted


def test_force_promote_is_recorded_as_such() -> None:
    nothing = report([False] * 3)
    gate = decide("v0001", nothing, nothing, 0.05, min_problems=20, force=True)
    assert gate.promoted and gate.forced and "force_promote" in gate.reason and "refused" in gate.reason


@pytest.mark.parametrize(("n", "wins", "losses"), [(32, 1, 2), (32, 5, 1), (40, 6, 3), (25, 0, 4)])
def test_the_exact_bootstrap_bound_matches_resampling(n: int, wins: int, losses: int) -> None:
    pop = [1] * wins + [-1] * losses + [0] * (n - wins - losses)
    rng = random.Random(0)
    draws = sorted(sum(rng.choice(pop) for _ in range(n)) for _ in range(20000))
    simulated = draws[int(0.05 * len(draws))] / n
    assert abs(bootstrap_lower_bound(n, wins, losses, 0.05) - simulated) <= 1 / n + 1e-12
