"""The results of an experiment (``mathagent experiment``): typed row results, the 95% bootstrap
interval of an accuracy, the rich table and the log-prob curve plots.

Why a hand-written bootstrap: it is ten lines of numpy (percentile bootstrap over problems);
scipy.stats.bootstrap would add a dependency for the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field
from rich.table import Table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from agent.evaluate import ProblemOutcome

RowStatus = Literal["done", "skipped", "failed"]
Measure = Literal["greedy", "maj", "revised"]  # what of a row a comparison reads: greedy, maj@k, greedy revised


class Accuracy(BaseModel):
    """An accuracy on the held-out split with its 95% percentile-bootstrap interval."""

    value: float
    low: float
    high: float
    n: int

    def cell(self) -> str:
        return f"{100 * self.value:.1f}"

    def ci_cell(self) -> str:
        return f"[{100 * self.low:.1f}, {100 * self.high:.1f}]"


class RowResult(BaseModel):
    """One row of the comparison. Only ``done`` rows are stored (``rows/<name>.json``); the
    others are recomputed on every run, so a later run with a larger budget does them."""

    name: str
    label: str
    kind: str = Field("", description="the row's kind (experiment.RowKind); empty in rows stored before it was recorded")
    status: RowStatus
    reason: str = ""
    greedy: Accuracy | None = None
    maj: Accuracy | None = Field(None, description="maj@k, where the row measures it")
    maj_k: int | None = None
    tool_call_rate: float | None = None
    start: str | None = Field(None, description="the model the row started from (spec or registry version)")
    version: str | None = Field(None, description="the registry version the row trained")
    loss: str | None = None
    pairs: int | None = None
    pair_counts: dict[str, int] = Field(default_factory=dict)
    train_steps: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    curves: str | None = Field(None, description="curves.jsonl of the training, relative to the run directory")
    seconds: float = 0.0
    step_seconds: dict[str, float] = Field(default_factory=dict)
    greedy_by_problem: dict[str, bool] | None = Field(
        None, description="held-out problem id -> greedy answer correct (the paired comparisons read it); "
        "None in rows stored before it was recorded")
    maj_by_problem: dict[str, bool] | None = Field(None, description="problem id -> maj@k correct, where the row "
                                                   "measures maj@k")
    revised: Accuracy | None = Field(None, description="greedy accuracy after `revisions` self-revisions (SRPO rows)")
    revisions: int | None = None
    revised_by_problem: dict[str, bool] | None = Field(None, description="problem id -> correct after the revisions")

    def by_problem(self, measure: Measure) -> dict[str, bool] | None:
        """Per-problem correctness of ``measure`` (None where the row did not store it)."""
        return {"greedy": self.greedy_by_problem, "maj": self.maj_by_problem, "revised": self.revised_by_problem}[measure]

    def accuracy(self, measure: Measure) -> Accuracy | None:
        return {"greedy": self.greedy, "maj": self.maj, "revised": self.revised}[measure]

    def measure_label(self, measure: Measure) -> str:
        if measure == "maj":
            return f"{self.label} maj@{self.maj_k or 'k'}"
        if measure == "revised":
            return f"{self.label} + {self.revisions or 'k'} revisions"
        return self.label


def correct_by_problem(outcomes: Sequence[ProblemOutcome], measure: Measure) -> dict[str, bool]:
    """``problem id -> correct`` of an evaluation's outcomes (``agent.evaluate.ProblemOutcome``)."""
    if measure == "greedy":
        return {o.problem_id: bool(o.greedy_correct) for o in outcomes}
    if measure == "revised":
        return {o.problem_id: bool(o.revised_correct) for o in outcomes}
    return {o.problem_id: bool(o.maj_correct) for o in outcomes}


def bootstrap_ci(correct: list[bool], *, iters: int = 2000, seed: int = 0, level: float = 0.95) -> Accuracy:
    """Mean of ``correct`` and its percentile bootstrap interval (resampling problems)."""
    n = len(correct)
    if n == 0:
        return Accuracy(value=0.0, low=0.0, high=0.0, n=0)
    x = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(iters, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Accuracy(value=float(x.mean()), low=float(low), high=float(high), n=n)


def table(rows: list[RowResult], *, title: str) -> Table:
    t = Table(title=title)
    for col in ("row", "status", "acc %", "95% CI", "n", "start", "pairs", "steps", "loss", "version", "s", "note"):
        t.add_column(col, overflow="fold")
    for r in rows:
        done = r.status == "done"
        measures: list[tuple[str, Accuracy | None]] = [(r.label, r.greedy)]
        # a vote or revise row's greedy accuracy is its start row's (greedy decoding is deterministic): not repeated
        if r.kind == "vote":
            measures = [(f"{r.label} maj@{r.maj_k or 'k'}", r.maj)]
        elif r.kind == "revise":
            measures = [(r.measure_label("revised"), r.revised)]
        elif r.maj is not None:
            measures.append((f"{r.label} maj@{r.maj_k}", r.maj))
        if r.revised is not None and r.kind != "revise":
            measures.append((r.measure_label("revised"), r.revised))
        for i, (label, acc) in enumerate(measures):
            loss = (f"{r.loss_first:.3f}->{r.loss_last:.3f}"
                    if i == 0 and r.loss_first is not None and r.loss_last is not None else "")
            t.add_row(
                label, r.status if done else f"[yellow]{r.status}[/]",
                acc.cell() if acc else "-", acc.ci_cell() if acc else "-", str(acc.n) if acc else "-",
                (r.start or "") if i == 0 else "", str(r.pairs) if i == 0 and r.pairs is not None else "",
                str(r.train_steps) if i == 0 and r.train_steps is not None else "", loss,
                (r.version or "") if i == 0 else "", f"{r.seconds:.0f}" if i == 0 and done else "",
                r.reason if i == 0 else "",
            )
    return t


def read_curves(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a torn last line of an interrupted training
            continue
    return out


def plot_curves(rows: list[RowResult], run_dir: Path, out_dir: Path) -> list[Path]:
    """Per trained row, the mean model-token log-probs of chosen and rejected sequences per
    optimizer step (IRPO's figure: without NLL both fall; with it chosen rises) and, for
    preference rows, their change against the reference (beta * (log pi - log pi_ref)); plus one
    figure with every row's log-probs. Returns the PNG files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {r.name: (r, read_curves(run_dir / r.curves)) for r in rows if r.status == "done" and r.curves}
    curves = {k: v for k, v in curves.items() if v[1]}
    written: list[Path] = []
    if not curves:
        return written
    for name, (row, recs) in curves.items():
        steps = [int(c["step"]) for c in recs]
        preference = row.loss != "sft"  # sft: no rejected, no reference
        fig, axes = plt.subplots(1, 2 if preference else 1, figsize=(11 if preference else 6, 4), squeeze=False)
        ax = axes[0][0]
        for which, style, ys in _series(recs, "logps", rejected=preference):
            ax.plot(steps, ys, style, marker=".", label=which)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mean log-prob (model tokens)")
        ax.set_title(f"{row.label} ({row.loss})")
        ax.legend()
        if preference:
            # beta * (log pi - log pi_ref) of the step's batch: the change the training made, free of
            # the batch-to-batch spread of the absolute log-probs on the left
            ax = axes[0][1]
            for which, style, ys in _series(recs, "rewards", rejected=True):
                ax.plot(steps, ys, style, marker=".", label=which)
            ax.axhline(0.0, color="grey", linewidth=0.5)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("beta * (log pi - log pi_ref)")
            ax.set_title("change vs the reference")
            ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    both, ax_all = plt.subplots(figsize=(8, 5))
    plot_all_logps(ax_all, list(curves.values()))
    both.tight_layout()
    path = out_dir / "logps.png"
    both.savefig(path, dpi=100)
    plt.close(both)
    written.append(path)
    return written


def _series(recs: list[dict[str, float]], prefix: str, *, rejected: bool) -> list[tuple[str, str, list[float]]]:
    """``(chosen|rejected, line style, values per step)`` of ``{prefix}_chosen`` and, with
    ``rejected``, ``{prefix}_rejected``; a series that is NaN at every step is left out."""
    out = []
    for which, style in (("chosen", "-"), ("rejected", "--"))[: 2 if rejected else 1]:
        ys = [float(c.get(f"{prefix}_{which}", float("nan"))) for c in recs]
        if any(y == y for y in ys):  # not all NaN
            out.append((which, style, ys))
    return out


def plot_all_logps(ax: Axes, curves: list[tuple[RowResult, list[dict[str, float]]]]) -> None:
    """Every row's chosen (solid) and rejected (dashed) log-probs on one axes, one colour per row
    (matplotlib's default cycle repeats after ten lines, which made two rows look like one)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(curves) <= 10 else "tab20"]
    for i, (row, recs) in enumerate(curves):
        steps = [int(c["step"]) for c in recs]
        for which, style, ys in _series(recs, "logps", rejected=row.loss != "sft"):
            # one legend entry per row: the rejected line shares its colour, the title says dashed
            label = row.label if which == "chosen" else "_" + row.label
            ax.plot(steps, ys, style, marker=".", color=cmap(i % cmap.N), label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean log-prob (model tokens)")
    ax.set_title("chosen (solid) and rejected (dashed) log-probs, one colour per row")
    ax.legend(fontsize=7)
