"""The orderings the papers claim between rows of ``mathagent experiment``, tested paired.

Every row of a run is measured on the same held-out problems and stores, per problem, whether it
was right (``RowResult.greedy_by_problem`` / ``maj_by_problem``), so each claim "a < b" is a
paired comparison (:mod:`trainer.paired`): the difference b - a, its 95% paired-bootstrap
interval, McNemar's exact p-value, and whether it holds (b better at p < 0.05). A claim is shown
where both of its rows are in the run; when one is not done, or was stored before per-problem
results were recorded, the claim is shown as unavailable with the reason.

Sources (docs/algorithms.md): IRPO's table (SFT 63.5 < STaR 65.2 < IRPO it.1 73.1; DPO 61.8 <
DPO+NLL 73.1; it.1 73.1 <= it.2 78.0 <= it.3 81.1; + majority vote of 32 above greedy); M-DPO's
(SFT 77.5 < RAFT 79.2 < M-DPO it.1 81.5 <= it.2 82.5; fixed reference 79.9 < previous-iteration
reference 82.5); SRPO's (a model trained for self-improvement revises better than a DPO-style model
given the same revision prompt, and its own revisions improve on its first answer). "<=" marks the
iteration chains, whose gains the papers show shrinking; every
claim is tested the same way (b significantly better than a).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field
from rich.table import Table

from trainer.experiment_report import Measure, RowResult, bootstrap_ci
from trainer.paired import PairedComparison, compare


@dataclass(frozen=True)
class Claim:
    """``lower`` (a row name and what of it is read) is claimed below ``higher``."""

    source: str
    lower: str
    higher: str
    lower_measure: Measure = "greedy"
    higher_measure: Measure = "greedy"
    relation: str = "<"


def _vote(row: str, source: str) -> Claim:
    """Greedy decoding of a row below its own maj@k (the same evaluation's two measures)."""
    return Claim(source, row, row, "greedy", "maj")


CLAIMS: list[Claim] = [
    Claim("IRPO", "sft_gold", "star"),
    Claim("IRPO", "star", "dpo_nll_1"),
    Claim("IRPO", "dpo_1", "dpo_nll_1"),
    Claim("IRPO", "dpo_nll_1", "dpo_nll_2", relation="<="),
    Claim("IRPO", "dpo_nll_2", "dpo_nll_3", relation="<="),
    Claim("M-DPO", "sft_gold", "raft"),
    Claim("M-DPO", "raft", "mdpo_1"),
    Claim("M-DPO", "mdpo_1", "mdpo_2_prev", relation="<="),
    Claim("M-DPO", "mdpo_2_fixed", "mdpo_2_prev"),
    _vote("zero_shot", "IRPO"),
    _vote("zero_shot_cot", "IRPO"),
    _vote("sft_gold_vote", "IRPO"),
    _vote("dpo_nll_3_vote", "IRPO"),
    Claim("SRPO", "dpo_nll_1_revise", "srpo_1", "revised", "revised"),
    Claim("SRPO", "srpo_1", "srpo_1", "greedy", "revised"),
]


class ClaimResult(BaseModel):
    """One claim on one run: its paired comparison, or why there is none."""

    source: str = Field(description="the paper that claims the ordering")
    lower: str = Field(description="the row (and measure) claimed lower, as the table labels it")
    higher: str = Field(description="the row (and measure) claimed higher")
    relation: str = Field(description="< or <= (iteration chains)")
    lower_row: str
    higher_row: str
    comparison: PairedComparison | None = Field(
        None, description="higher against lower; None when unavailable"
    )
    unavailable: str = Field("", description="why there is no comparison")

    @property
    def holds(self) -> bool:
        return self.comparison is not None and self.comparison.holds()


def _missing(row: RowResult, measure: Measure) -> str | None:
    if row.status != "done":
        return f"{row.name} {row.status}" + (f" ({row.reason})" if row.reason else "")
    if row.by_problem(measure) is None:
        return f"{row.name}: no per-problem results (stored before they were recorded)"
    return None


def evaluate_claims(
    rows: list[RowResult], *, seed: int = 0, claims: list[Claim] | None = None
) -> list[ClaimResult]:
    """Every claim whose two rows are among ``rows``, in :data:`CLAIMS` order."""
    by_name = {r.name: r for r in rows}
    out = []
    for c in CLAIMS if claims is None else claims:
        lo, hi = by_name.get(c.lower), by_name.get(c.higher)
        if lo is None or hi is None:
            continue
        head = dict(
            source=c.source,
            lower=lo.measure_label(c.lower_measure),
            higher=hi.measure_label(c.higher_measure),
            relation=c.relation,
            lower_row=lo.name,
            higher_row=hi.name,
        )
        why = [w for w in (_missing(lo, c.lower_measure), _missing(hi, c.higher_measure)) if w]
        if why:
            out.append(ClaimResult(**head, unavailable="; ".join(dict.fromkeys(why))))
            continue
        a, b = lo.by_problem(c.lower_measure), hi.by_problem(c.higher_measure)
        assert a is not None and b is not None
        if not set(a) & set(b):
            out.append(ClaimResult(**head, unavailable="no problem in common"))
            continue
        out.append(ClaimResult(**head, comparison=compare(a, b, seed=seed)))
    return out


def pool_seeds(runs: dict[int, list[RowResult]]) -> list[RowResult]:
    """The rows of several seeds' runs as one run whose problems are every seed's (keyed
    ``<seed>/<problem id>``), for claims pooled over seeds: each seed's held-out problems were
    answered by that seed's models, so a pooled claim asks whether the method (not one trained
    model) orders the rows. A row is pooled where it is done with per-problem results in every
    seed; otherwise it is kept as not done, with the seeds that lack it."""
    if not runs:
        return []
    first = next(iter(runs.values()))
    by_seed = {seed: {r.name: r for r in rows} for seed, rows in runs.items()}
    out = []
    for row in first:
        per_seed = {seed: rows.get(row.name) for seed, rows in by_seed.items()}
        lacking = [
            str(s)
            for s, r in per_seed.items()
            if r is None or r.status != "done" or r.greedy_by_problem is None
        ]
        if lacking:
            out.append(
                RowResult(
                    name=row.name,
                    label=row.label,
                    kind=row.kind,
                    status="skipped",
                    reason=f"not done with per-problem results in seed {', '.join(lacking)}",
                )
            )
            continue
        update: dict[str, object] = {}
        for measure in ("greedy", "maj", "revised"):
            parts = {seed: r.by_problem(measure) for seed, r in per_seed.items() if r is not None}
            pooled = (
                None
                if any(p is None for p in parts.values())
                else {f"{seed}/{pid}": ok for seed, p in parts.items() if p for pid, ok in p.items()}
            )
            update[f"{measure}_by_problem"] = pooled
            update[measure] = bootstrap_ci(list(pooled.values())) if pooled else None
        out.append(row.model_copy(update=update))
    return out


def claims_table(results: list[ClaimResult], *, title: str) -> Table:
    t = Table(title=title)
    for col in (
        "claim",
        "source",
        "diff (pts)",
        "95% paired CI",
        "p (McNemar)",
        "discordant -/+",
        "n",
        "holds",
    ):
        t.add_column(col, overflow="fold")
    for r in results:
        claim = f"{r.lower} {r.relation} {r.higher}"
        c = r.comparison
        if c is None:
            t.add_row(claim, r.source, "-", "-", "-", "-", "-", f"[yellow]unavailable[/]: {r.unavailable}")
            continue
        t.add_row(
            claim,
            r.source,
            f"{100 * c.difference:+.1f}",
            f"[{100 * c.low:+.1f}, {100 * c.high:+.1f}]",
            f"{c.p_value:.3g}",
            f"{c.only_a}/{c.only_b}",
            str(c.n),
            "[green]yes[/]"
            if r.holds
            else ("no (reversed)" if c.difference < 0 and c.p_value < 0.05 else "no"),
        )
    return t
