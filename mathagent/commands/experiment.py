"""``mathagent experiment irpo|mdpo``: run (or resume) an experiment in the foreground with a
progress line, then print the comparison table and where the plots are.

Expected failures (bad options, missing data, unknown model, another config in the run
directory) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.configuration import load
from mathagent.errors import fail, option_errors
from mathagent.options import given
from trainer.settings import TrainerSettings


def run_experiment_command(options: dict[str, Any]) -> int:
    """``options``: ``family``, the fields of :class:`trainer.experiment.ExperimentConfig` (None = not
    given), ``scale``, ``budget_minutes``, ``rows`` and ``run_dir``."""
    from agent.datasets import DatasetError
    from agent.modelstore import ModelSpecError
    from agent.runtime import SandboxStartError
    from trainer.experiment import (
        BUDGET_MINUTES,
        ExperimentError,
        experiment_config,
        resolve_scale,
        run_experiment,
    )
    from trainer.experiment_claims import claims_table, evaluate_claims
    from trainer.experiment_report import table
    from trainer.registry import RegistryError

    family, scale, rows = options.pop("family"), options.pop("scale"), options.pop("rows")
    run_dir, budget_minutes = options.pop("run_dir"), options.pop("budget_minutes")
    settings = load(TrainerSettings)
    try:
        config = experiment_config(family, resolve_scale(scale), **given(options))
    except ValidationError as exc:
        return fail(option_errors(exc))
    if budget_minutes is None:
        budget_minutes = BUDGET_MINUTES
    if budget_minutes < 0:
        return fail("--budget-minutes must be >= 0")
    budget_s = None if math.isinf(budget_minutes) else budget_minutes * 60
    run_dir = run_dir or settings.state_dir / "experiments" / f"{family}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(stderr=True)
    console.print(f"[dim]run directory {run_dir} (the same command with --run-dir {run_dir} resumes it)[/]")
    levels_note = f" levels {','.join(map(str, config.levels))}" if config.dataset == "tasks" else ""
    console.print(f"[dim]{config.dataset}{levels_note}: {config.train_limit} training / {config.eval_limit} held-out "
                  f"problems, {config.samples} samples each, maj@{config.maj_k}, batch {config.batch_size}, warm-up "
                  f"{config.warmup_epochs} epochs; budget "
                  f"{'none' if budget_s is None else f'{budget_minutes:g} min'}[/]")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("starting", total=None)

        last: dict[str, Any] = {"what": None, "tenth": -1}

        def show(what: str, done: int, total: int) -> None:
            bar.update(task, description=what[:70], completed=done, total=total or None)
            if console.is_terminal:
                return
            # a log file gets plain lines instead of the live bar: a new step, then every tenth of it
            tenth = 10 * done // total if total else done // 10
            key = what.rsplit(" loss", 1)[0]  # a training step's description carries its loss
            if key != last["what"] or tenth != last["tenth"]:
                last.update(what=key, tenth=tenth)
                print(f"{time.strftime('%H:%M:%S')} {what} {done}/{total or '?'}", file=sys.stderr, flush=True)

        try:
            results = asyncio.run(run_experiment(config, run_dir, settings, budget_s=budget_s, progress=show,
                                                 rows=[r.strip() for r in rows.split(",") if r.strip()] if rows else None))
        except (ExperimentError, DatasetError, ModelSpecError, RegistryError, SandboxStartError) as exc:
            return fail(str(exc).splitlines()[0])
    title = (f"{family} experiment: {config.dataset} held-out (n={config.eval_limit}), model {config.model}; "
             "accuracy % with 95% bootstrap CI")
    Console(width=200).print(table(results, title=title))
    claims = evaluate_claims(results, seed=config.seed)
    if claims:
        Console(width=200).print(claims_table(claims, title=(
            "the papers' orderings, paired on the same held-out problems: b - a in points, 95% paired bootstrap "
            "interval, McNemar's exact p; holds = b better at p < 0.05")))
    plots = sorted((run_dir / "plots").glob("*.png"))
    if plots:
        Console().print("log-prob curves: " + ", ".join(str(p) for p in plots))
    Console().print(f"results: {run_dir / 'summary.json'}, paired comparisons: {run_dir / 'paired.json'}")
    return 0
