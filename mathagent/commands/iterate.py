"""``mathagent iterate``: run (or resume) a retrain run in the foreground with a progress bar.

The same driver as the worker's job (:mod:`trainer.iterate`); the run directory makes it
resumable: run the same command with the same ``--run-dir`` after an interruption.
Expected failures (bad options, missing data, unknown model, a failed training run) end with
one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.configuration import load
from mathagent.errors import fail, option_errors
from trainer.progress import Progress as RunProgress
from trainer.settings import TrainerSettings


def run_iterate(options: dict[str, Any]) -> int:
    """``options``: the fields of :class:`trainer.recipe.RetrainRequest`, ``run_dir`` and ``deploy_url``."""
    from agent.datasets import DatasetError
    from agent.modelstore import ModelSpecError
    from agent.runtime import SandboxStartError
    from trainer.iterate import run_iterations
    from trainer.launch import TrainingFailed
    from trainer.recipe import RetrainRequest, resolve_recipe
    from trainer.registry import RegistryError
    from trainer.runstate import RunStateError

    run_dir, deploy_url = options.pop("run_dir"), options.pop("deploy_url")
    settings = load(TrainerSettings, **({} if deploy_url is None else {"gateway_url": deploy_url}))
    try:
        recipe = resolve_recipe(settings, RetrainRequest(**options))
    except ValidationError as exc:
        return fail(option_errors(exc))
    except ValueError as exc:
        return fail(str(exc))
    run_dir = run_dir or settings.runs_path / f"cli-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(stderr=True)
    console.print(f"[dim]run directory {run_dir} (run the same command with --run-dir {run_dir} to resume)[/]")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[note]}"), console=console) as bar:
        task = bar.add_task("starting", total=None, note="")

        async def show(p: RunProgress) -> None:
            note = p.message
            if p.phase == "train" and p.loss is not None:
                note = f"loss {p.loss:.4f} margin {p.margin or 0:.3f}"
            bar.update(task, description=f"iteration {p.iteration}/{p.iterations} {p.phase.value}",
                       completed=p.done, total=p.total or None, note=note[:80])

        try:
            outcome = asyncio.run(run_iterations(settings, recipe, run_dir, run_id=run_dir.name, progress=show))
        except (DatasetError, ModelSpecError, RunStateError, RegistryError, TrainingFailed, SandboxStartError) as exc:
            return fail(str(exc).splitlines()[0] if not isinstance(exc, TrainingFailed) else str(exc))

    table = Table(title=f"retrain run {outcome.run_id}: {outcome.status}")
    for col in ("it", "base", "T", "prompts", "pairs", "steps", "loss", "current", "candidate", "result"):
        table.add_column(col)
    for it in outcome.iterations:
        g = it.gate
        table.add_row(
            str(it.iteration), it.base_version, f"{it.temperature:g}", str(it.prompts), str(it.pairs),
            str(it.train_steps or "-"),
            f"{it.loss_first:.3f} -> {it.loss_last:.3f}" if it.loss_first is not None and it.loss_last is not None else "-",
            f"{g.accuracy_current:.3f}" if g else "-", f"{g.accuracy_candidate:.3f}" if g else "-",
            it.version or it.status,
        )
    Console().print(table)
    for it in outcome.iterations:
        Console().print(f"iteration {it.iteration} seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in it.seconds.items()))
    Console().print(f"active version: {outcome.active_before} -> {outcome.active_after}")
    return 0
