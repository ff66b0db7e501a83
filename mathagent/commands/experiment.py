"""``mathagent experiment irpo|mdpo``: run (or resume) an experiment in the foreground with a
progress line, then print the comparison table and where the plots are.

Expected failures (bad options, missing data, unknown model, another config in the run
directory) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.configuration import load
from mathagent.errors import fail, option_errors
from mathagent.options import given
from trainer.settings import TrainerSettings


@contextlib.contextmanager
def _own_vllm(settings: TrainerSettings, model: str, console: Console) -> Iterator[TrainerSettings]:
    """A vLLM server for this experiment alone (no LoRA: every row's weights are reloaded in
    place), and the settings that point the experiment at it."""
    from agent.modelstore import resolve
    from mathagent.bench.vllm import bench_vllm

    path = resolve(model, settings.state_dir).path
    with bench_vllm(path, console, log_dir=settings.state_dir / "logs", log_name="experiment-vllm.log") as server:
        yield settings.model_copy(update={"engine": "vllm", "vllm_url": server.url, "vllm_model": server.served_name,
                                          "model": model})


def run_experiment_command(options: dict[str, Any]) -> int:
    """``options``: ``family``, the fields of :class:`trainer.experiment.ExperimentConfig` (None = not
    given), ``scale``, ``budget_minutes``, ``rows``, ``run_dir`` and ``seeds``."""
    from agent.datasets import DatasetError
    from agent.engines.base import EngineError
    from agent.modelstore import ModelSpecError
    from agent.runtime import SandboxStartError
    from mathagent.vllm_server import VLLMServerError
    from trainer.experiment import (
        BUDGET_MINUTES,
        ExperimentError,
        experiment_config,
        resolve_scale,
        run_seeds,
        seed_dirs,
    )
    from trainer.experiment_claims import claims_table, evaluate_claims, pool_seeds
    from trainer.experiment_report import table
    from trainer.registry import RegistryError

    family, scale, rows = options.pop("family"), options.pop("scale"), options.pop("rows")
    run_dir, budget_minutes, seeds = options.pop("run_dir"), options.pop("budget_minutes"), options.pop("seeds")
    settings = load(TrainerSettings)
    try:
        config = experiment_config(family, resolve_scale(scale), **given(options))
    except ValidationError as exc:
        return fail(option_errors(exc))
    if seeds < 1:
        return fail("--seeds must be >= 1")
    if budget_minutes is None:
        budget_minutes = BUDGET_MINUTES * seeds
    if budget_minutes < 0:
        return fail("--budget-minutes must be >= 0")
    budget_s = None if math.isinf(budget_minutes) else budget_minutes * 60
    run_dir = run_dir or settings.state_dir / "experiments" / f"{family}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(stderr=True)
    console.print(f"[dim]run directory {run_dir} (the same command with --run-dir {run_dir} resumes it)[/]")
    dirs = seed_dirs(run_dir, config.seed, seeds)
    if seeds > 1:
        console.print(f"[dim]seeds {', '.join(map(str, dirs))}: one run each, in {', '.join(str(d) for d in dirs.values())}[/]")
    levels_note = f" levels {','.join(map(str, config.levels))}" if config.dataset == "tasks" else ""
    test_note = " test-split" if config.dataset != "tasks" and config.eval_split == "test" else ""
    console.print(f"[dim]{config.dataset}{levels_note}: {config.train_limit} training / {config.eval_limit}{test_note} held-out "
                  f"problems, {config.samples} samples each, maj@{config.maj_k}, batch {config.batch_size}, warm-up "
                  f"{config.warmup_epochs} epochs, {config.max_new_tokens} tokens per turn; budget "
                  f"{'none' if budget_s is None else f'{budget_minutes:g} min'}[/]")
    try:
        with contextlib.ExitStack() as stack:
            if config.engine == "vllm":  # started before the progress bar: its start shows a status line
                settings = stack.enter_context(_own_vllm(settings, config.model, console))
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

                runs = asyncio.run(run_seeds(config, run_dir, settings, seeds=seeds, budget_s=budget_s, progress=show,
                                             rows=[r.strip() for r in rows.split(",") if r.strip()] if rows else None))
    except (ExperimentError, DatasetError, ModelSpecError, RegistryError, SandboxStartError, VLLMServerError,
            EngineError) as exc:
        return fail(str(exc).splitlines()[0])
    out = Console(width=200)
    for seed, results in runs.items():
        d = dirs[seed]
        seed_note = f", seed {seed}" if seeds > 1 else ""
        title = (f"{family} experiment: {config.dataset} held-out (n={config.eval_limit}), model {config.model}, "
                 f"engine {config.engine}{seed_note}; accuracy % with 95% bootstrap CI")
        out.print(table(results, title=title))
        claims = evaluate_claims(results, seed=seed)
        if claims:
            out.print(claims_table(claims, title=(
                f"the papers' orderings{seed_note}, paired on the same held-out problems: b - a in points, 95% paired "
                "bootstrap interval, McNemar's exact p; holds = b better at p < 0.05")))
        plots = sorted((d / "plots").glob("*.png"))
        if plots:
            Console().print("log-prob curves: " + ", ".join(str(p) for p in plots))
        Console().print(f"results: {d / 'summary.json'}, paired comparisons: {d / 'paired.json'}")
    if seeds > 1:
        pooled = evaluate_claims(pool_seeds(runs), seed=config.seed)
        if pooled:
            out.print(claims_table(pooled, title=(
                f"the papers' orderings pooled over seeds {', '.join(map(str, runs))} (n = the seeds' held-out "
                "problems together; each seed's rows trained and measured in that seed)")))
            Console().print(f"pooled paired comparisons: {run_dir / 'paired.json'}")
    return 0
