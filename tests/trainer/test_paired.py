"""Paired statistics (trainer/paired.py) against values computed by hand."""

from __future__ import annotations

import math

import pytest

from trainer.experiment_report import bootstrap_ci
from trainer.paired import compare, mcnemar_exact, paired_bootstrap


def _results(both: int, only_a: int, only_b: int, neither: int) -> tuple[dict[str, bool], dict[str, bool]]:
    """Per-problem outcomes of a and b with the given 2x2 table (problem ids p000, p001, ...)."""
    cells = (
        [(True, True)] * both
        + [(True, False)] * only_a
        + [(False, True)] * only_b
        + [(False, False)] * neither
    )
    a = {f"p{i:03d}": x for i, (x, _) in enumerate(cells)}
    b = {f"p{i:03d}": y for i, (_, y) in enumerate(cells)}
    return a, b


def test_mcnemar_on_a_small_table_by_hand():
    # 30 problems:      b right  b wrong
    #        a right       20        1
    #        a wrong        6        3
    # discordant n_d = 7, min = 1: P(X <= 1) for X ~ Bin(7, 1/2) = (C(7,0) + C(7,1)) / 2^7 = 8/128,
    # two-sided p = 16/128 = 0.125; accuracies 21/30 and 26/30, difference 5/30
    a, b = _results(20, 1, 6, 3)
    c = compare(a, b, seed=0)
    assert c.p_value == pytest.approx(0.125)
    assert (c.n, c.only_a, c.only_b) == (30, 1, 6)
    assert c.difference == pytest.approx(5 / 30)
    assert not c.holds()  # 5 more problems, but 7 discordant ones cannot show it at 0.05


def test_mcnemar_more_values_by_hand():
    # 0 vs 6: 2 * 1/64 = 0.03125
    assert mcnemar_exact(0, 6) == pytest.approx(1 / 32)
    assert mcnemar_exact(6, 0) == pytest.approx(1 / 32)  # symmetric
    # 2 vs 10: 2 * (1 + 12 + 66) / 4096 = 158 / 4096
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    # balanced discordance and none at all: no evidence either way
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # 1 vs 1: 2 * (1 + 2) / 4 = 1.5, capped at 1
    assert mcnemar_exact(1, 1) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mcnemar_large_counts_match_the_normal_approximation():
    # 2^6100 is far beyond a float: the exact path must still give the right tail. With continuity
    # correction, z = (|3000 - 3100| - 1) / sqrt(6100) = 1.2676..., two-sided p = erfc(z / sqrt 2)
    z = (100 - 1) / math.sqrt(6100)
    assert mcnemar_exact(3000, 3100) == pytest.approx(math.erfc(z / math.sqrt(2)), abs=2e-3)


def test_identical_results_give_a_zero_interval_and_p_one():
    a, _ = _results(12, 0, 0, 8)
    c = compare(a, dict(a), seed=3)
    assert (c.difference, c.low, c.high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (c.only_a, c.only_b) == (0, 0)
    assert not c.holds()


def test_paired_interval_contains_the_difference_and_is_reproducible():
    a, b = _results(150, 8, 30, 12)  # 200 problems, b solves 22 more
    c = compare(a, b, seed=7)
    assert c.difference == pytest.approx(22 / 200)
    assert c.low < c.difference < c.high
    assert c.low > 0  # 30 vs 8 discordant: clearly better
    assert c.p_value < 0.001 and c.holds()
    assert compare(a, b, seed=7) == c  # a fixed seed gives the same interval
    assert compare(a, b, seed=8).low != c.low  # and another seed resamples differently
    # b never loses a problem a solves: every resample has a difference >= 0
    a2, b2 = _results(20, 0, 5, 15)
    assert compare(a2, b2).low >= 0.0


def test_the_paired_interval_is_narrower_than_independent_intervals():
    # the two rows agree on 190 of 200 problems: the paired interval is about the 10 discordant ones,
    # the independent intervals each carry the whole binomial spread (about +-6.5 points at 50%)
    a, b = _results(95, 2, 8, 95)
    c = compare(a, b)
    acc_a, acc_b = bootstrap_ci(list(a.values())), bootstrap_ci(list(b.values()))
    assert c.high - c.low < (acc_a.high - acc_a.low) / 2
    assert acc_a.high > acc_b.low  # independently the intervals overlap ...
    assert c.low < c.difference < c.high and c.difference == pytest.approx(
        6 / 200
    )  # ... paired it is +3 points


def test_moving_one_problem_changes_the_result_as_expected():
    a, b = _results(20, 1, 4, 5)
    before = compare(a, b)
    wrong_for_both = next(k for k in a if not a[k] and not b[k])
    after = compare(a, {**b, wrong_for_both: True})  # b now also solves a problem neither solved
    assert after.difference == pytest.approx(before.difference + 1 / 30)
    assert (after.only_a, after.only_b) == (1, 5)
    assert after.p_value == pytest.approx(2 * (1 + 6) / 64) and after.p_value < before.p_value
    # a solving a problem only b solved turns a discordant problem concordant: one point less for b
    only_b = next(k for k in a if b[k] and not a[k])
    back = compare({**a, only_b: True}, b)
    assert back.difference == pytest.approx(before.difference - 1 / 30) and (back.only_a, back.only_b) == (
        1,
        3,
    )


def test_only_common_problems_count_and_order_does_not_matter():
    a, b = _results(10, 1, 3, 6)
    extra = {**a, "q-only-in-a": True}
    assert compare(extra, b) == compare(a, b)
    reversed_b = dict(reversed(list(b.items())))
    assert compare(a, reversed_b, seed=1) == compare(a, b, seed=1)
    empty = compare({}, b)
    assert (empty.n, empty.difference, empty.p_value) == (0, 0.0, 1.0)


def test_paired_bootstrap_needs_the_same_problems():
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])
    assert paired_bootstrap([], []) == (0.0, 0.0)
