"""``mathagent experiment irpo|mdpo``: run (or resume) an experiment in the foreground with a
progress line, then print the comparison table and where the plots are.

Expected failures (bad options, missing data, unknown model, another config in the run
directory) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.configuration import load
from trainer.settings import TrainerSettings


def _fail(message: str) -> int:
    print(f"mathagent: {message}", file=sys.stderr)
    return 2


def run_experiment_cli(*, family: str, run_dir: Path | None, budget_minutes: float | None, levels: str,
                       **fields: Any) -> int:
    from agent.datasets import DatasetError
    from agent.modelstore import ModelSpecError
    from agent.tasks import parse_levels
    from trainer.experiment import ExperimentConfig, ExperimentError, run_experiment
    from trainer.experiment_report import table
    from trainer.registry import RegistryError

    settings = load(TrainerSettings)
    try:
        config = ExperimentConfig(family=family, levels=parse_levels(levels), **fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        return _fail("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                               for e in exc.errors()))
    except DatasetError as exc:
        return _fail(str(exc))
    if budget_minutes is not None and budget_minutes < 0:
        return _fail("--budget-minutes must be >= 0")
    run_dir = run_dir or settings.state_dir / "experiments" / f"{family}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(stderr=True)
    console.print(f"[dim]run directory {run_dir} (the same command with --run-dir {run_dir} resumes it)[/]")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("starting", total=None)

        def show(what: str, done: int, total: int) -> None:
            bar.update(task, description=what[:70], completed=done, total=total or None)

        try:
            rows = asyncio.run(run_experiment(config, run_dir, settings,
                                              budget_s=None if budget_minutes is None else budget_minutes * 60,
                                              progress=show))
        except (ExperimentError, DatasetError, ModelSpecError, RegistryError) as exc:
            return _fail(str(exc).splitlines()[0])
    title = (f"{family} experiment: {config.dataset} held-out (n={config.eval_limit}), model {config.model}; "
             "accuracy % with 95% bootstrap CI")
    Console(width=200).print(table(rows, title=title))
    plots = sorted((run_dir / "plots").glob("*.png"))
    if plots:
        Console().print("log-prob curves: " + ", ".join(str(p) for p in plots))
    Console().print(f"results: {run_dir / 'summary.json'}")
    return 0
