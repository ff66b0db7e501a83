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


SCALES: dict[str, dict[str, Any]] = {
    # cpu: the embedded model on 2 cores; every row of one family fits the budget (measured, see README).
    # A preference row trains ~16 steps here: at lr 1e-6 DPO's loss moved 0.693 -> 0.662 and the
    # model's accuracy not at all, so the cpu scale uses a larger step
    "cpu": {"train_limit": 32, "eval_limit": 40, "samples": 4, "maj_k": 4, "lr": 5e-6, "batch_size": 4,
            "warmup_epochs": 4, "levels": "1-5", "budget_minutes": 110},
    # gpu: more problems and samples for tighter intervals, more steps at the usual DPO learning rate
    "gpu": {"train_limit": 256, "eval_limit": 250, "samples": 8, "maj_k": 8, "lr": 1e-6, "batch_size": 4,
            "warmup_epochs": 4, "levels": "1-5", "budget_minutes": 110},
}
# Per family changes to a scale. The warm-up must converge before the other rows are compared with
# it: 32 gold trajectories x 4 epochs at batch 4 is 32 steps (loss 0.28, 17.5% held out at levels
# 1-5), x 8 epochs is 64 steps (loss 0.06, 82.5%); otherwise STaR and the NLL rows gain only by
# finishing the warm-up. M-DPO pairs only the model's own samples, one correct and one incorrect
# per problem; with the short warm-up 25 of 32 problems had no correct sample in 4 (README), so its
# scale took levels 1-3 and 8 samples, and batch 2 (64 warm-up steps at 4 epochs, 85%).
FAMILY_SCALES: dict[tuple[str, str], dict[str, Any]] = {
    ("cpu", "irpo"): {"warmup_epochs": 8},
    ("cpu", "mdpo"): {"levels": "1-3", "samples": 8, "batch_size": 2},
}


def resolve_scale(scale: str, family: str) -> dict[str, Any]:
    """The defaults of ``--scale`` for ``family`` (auto: gpu when CUDA is available)."""
    if scale == "auto":
        import torch

        scale = "gpu" if torch.cuda.is_available() else "cpu"
    if scale not in SCALES:
        raise ValueError(f"--scale must be auto, cpu or gpu, not {scale!r}")
    return {**SCALES[scale], **FAMILY_SCALES.get((scale, family), {})}


def run_experiment_cli(*, family: str, run_dir: Path | None, budget_minutes: float | None, levels: str | None, scale: str,
                       rows: str | None, **fields: Any) -> int:
    from agent.datasets import DatasetError
    from agent.modelstore import ModelSpecError
    from agent.tasks import parse_levels
    from trainer.experiment import ExperimentConfig, ExperimentError, run_experiment
    from trainer.experiment_report import table
    from trainer.registry import RegistryError

    settings = load(TrainerSettings)
    try:
        defaults = resolve_scale(scale, family)
    except ValueError as exc:
        return _fail(str(exc))
    for key, value in defaults.items():
        if key not in ("budget_minutes", "levels") and fields.get(key) is None:
            fields[key] = value
    if budget_minutes is None:
        budget_minutes = defaults["budget_minutes"]
    try:
        config = ExperimentConfig(family=family, levels=parse_levels(levels or defaults["levels"]), **fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        return _fail("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                               for e in exc.errors()))
    except DatasetError as exc:
        return _fail(str(exc))
    if budget_minutes < 0:
        return _fail("--budget-minutes must be >= 0")
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
        except (ExperimentError, DatasetError, ModelSpecError, RegistryError) as exc:
            return _fail(str(exc).splitlines()[0])
    title = (f"{family} experiment: {config.dataset} held-out (n={config.eval_limit}), model {config.model}; "
             "accuracy % with 95% bootstrap CI")
    Console(width=200).print(table(results, title=title))
    plots = sorted((run_dir / "plots").glob("*.png"))
    if plots:
        Console().print("log-prob curves: " + ", ".join(str(p) for p in plots))
    Console().print(f"results: {run_dir / 'summary.json'}")
    return 0
