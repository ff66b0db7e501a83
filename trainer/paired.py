"""Paired comparisons of two models measured on the same problems: McNemar's exact test and a
paired bootstrap interval of the accuracy difference.

Two rows of an experiment answer the same held-out problems, so what separates them is only the
problems one solves and the other does not (the discordant problems). McNemar's exact test asks
whether those split evenly (a two-sided binomial test with p = 1/2 on the discordant count); the
paired bootstrap resamples problems, keeping each problem's two outcomes together, so the
interval of the difference is much narrower than two independent intervals would suggest.

Why hand-written: scipy is not a dependency of the project (``scipy.stats.binomtest`` is the
exact test below, ``scipy.stats.bootstrap`` with ``paired=True`` the interval); each is a few
lines of ``math`` and numpy, and an extra compiled dependency for them is not worth it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field


class PairedComparison(BaseModel):
    """``b`` against ``a`` on the problems both were measured on: ``difference`` = acc(b) - acc(a)."""

    difference: float = Field(description="accuracy of b minus accuracy of a (a fraction)")
    low: float = Field(description="lower end of the paired-bootstrap interval of the difference")
    high: float = Field(description="upper end of the paired-bootstrap interval of the difference")
    level: float = Field(0.95, description="coverage of the interval")
    p_value: float = Field(description="McNemar's exact test, two-sided")
    n: int = Field(description="problems both were measured on")
    only_a: int = Field(description="discordant problems a solved and b did not")
    only_b: int = Field(description="discordant problems b solved and a did not")

    def holds(self, alpha: float = 0.05) -> bool:
        """b is better than a at significance ``alpha`` (the difference is positive and significant)."""
        return self.difference > 0 and self.p_value < alpha


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "neither is better" each of the ``only_a + only_b``
    discordant problems falls to either side with probability 1/2, so ``min(only_a, only_b)`` is
    Binomial(n_d, 1/2); p = 2 * P(X <= min), capped at 1 (the distribution is symmetric, so this
    equals the sum over every outcome at most as likely as the observed one). No discordant
    problem: p = 1."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    n_d = only_a + only_b
    if n_d == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n_d, i) for i in range(k + 1))
    # exact integers until the one division (Python divides big integers correctly rounded)
    return min(1.0, 2 * tail / 2**n_d)


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], *, iters: int = 4000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of mean(b) - mean(a), resampling problems (both outcomes of a problem
    together) ``iters`` times with a fixed ``seed``."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same problems: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return 0.0, 0.0
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(iters, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    a: Mapping[str, bool], b: Mapping[str, bool], *, iters: int = 4000, seed: int = 0, level: float = 0.95
) -> PairedComparison:
    """``b`` against ``a`` on the problem ids both hold (sorted, so the bootstrap does not depend
    on the order the results were stored in)."""
    ids = sorted(set(a) & set(b))
    xa = [bool(a[i]) for i in ids]
    xb = [bool(b[i]) for i in ids]
    only_a = sum(x and not y for x, y in zip(xa, xb, strict=True))
    only_b = sum(y and not x for x, y in zip(xa, xb, strict=True))
    low, high = paired_bootstrap(xa, xb, iters=iters, seed=seed, level=level)
    diff = (sum(xb) - sum(xa)) / len(ids) if ids else 0.0
    return PairedComparison(
        difference=diff,
        low=low,
        high=high,
        level=level,
        p_value=mcnemar_exact(only_a, only_b),
        n=len(ids),
        only_a=only_a,
        only_b=only_b,
    )
