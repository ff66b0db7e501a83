"""Bodies of the ``mathagent solve`` and ``mathagent eval`` commands (cli.py keeps only the options).

Every expected failure (bad settings, unknown model, missing data, bad arguments) ends with one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.configuration import load
from agent.settings import AgentSettings


def _fail(message: str) -> int:
    print(f"mathagent: {message}", file=sys.stderr)
    return 2


async def _solve(problem: str, gold: str | None, samples: int, revisions: int, mode: str, max_turns: int | None,
                 temperature: float | None, seed: int | None, as_json: bool) -> int:
    from agent.render import render_result
    from agent.runtime import open_runtime

    settings = load(AgentSettings)
    err = Console(stderr=True)
    with err.status("loading the model and the sandbox..."):
        ctx = open_runtime(settings)
        rt = await ctx.__aenter__()
    try:
        if not as_json:
            err.print(f"[dim]{rt.sandbox_note}; model {settings.model} ({rt.engine.model_version})[/]")
        with err.status("solving..."):
            result = await rt.solver.solve(problem, gold=gold, mode=mode, samples=samples, revisions=revisions,
                                           max_turns=max_turns, temperature=temperature, seed=seed, source="api")
        if as_json:
            print(result.model_dump_json())
        else:
            render_result(result, Console())
            spooled = len(rt.trajectory_log.spooled())
            where = f"spooled locally ({spooled} waiting for Redis)" if spooled else f"logged to {settings.redis_url}"
            err.print(f"[dim]{len(result.trajectories)} trajectories {where}[/]")
    finally:
        await ctx.__aexit__(None, None, None)
    return 0


def run_solve(problem: str, *, gold: str | None, samples: int, revisions: int, mode: str, max_turns: int | None,
              temperature: float | None, seed: int | None, as_json: bool) -> int:
    from agent.modelstore import ModelSpecError
    from agent.solver import SolveError

    try:
        return asyncio.run(_solve(problem, gold, samples, revisions, mode, max_turns, temperature, seed, as_json))
    except (ModelSpecError, SolveError) as exc:
        return _fail(str(exc))


async def _eval(dataset: str, split: str, limit: int | None, samples: int, mode: str, data_dir: Path | None,
                out: Path | None, concurrency: int, seed: int) -> int:
    from agent.datasets import load_problems
    from agent.evaluate import evaluate
    from agent.runtime import open_runtime
    from agent.trajectory import Mode

    settings = load(AgentSettings)
    problems = load_problems(dataset, split, data_dir=data_dir, limit=limit, seed=seed)
    if not problems:
        return _fail(f"{dataset}/{split}: no problems")
    out = out or Path(f"eval-{dataset}-{split}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    console = Console(stderr=True)
    async with open_runtime(settings) as rt:
        console.print(f"[dim]{rt.sandbox_note}; model {settings.model} ({rt.engine.model_version}); "
                      f"{len(problems)} problems, mode {mode}, samples {samples}[/]")
        correct = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task(f"{dataset}/{split} greedy 0/0", total=len(problems))

            def done(o: object) -> None:
                nonlocal correct
                correct += int(getattr(o, "greedy_correct", False))
                n = int(progress.tasks[0].completed) + 1
                progress.update(task, advance=1, description=f"{dataset}/{split} greedy {correct}/{n}")

            report = await evaluate(rt.solver, problems, dataset=dataset, mode=Mode(mode), samples=samples,
                                    concurrency=concurrency, out_path=out, seed=seed, on_done=done)
    print(f"dataset {dataset}/{split}  problems {report.n}  mode {report.mode}  model {settings.model}")
    print(f"greedy accuracy: {report.greedy_accuracy:.1%} ({sum(o.greedy_correct for o in report.outcomes)}/{report.n})")
    if report.maj_accuracy is not None:
        print(f"maj@{samples} accuracy: {report.maj_accuracy:.1%}")
    print(f"tool-call rate: {report.tool_call_rate:.0%}  time: {report.elapsed_s:.0f}s")
    print(f"trajectories: {out}")
    summary = out.with_suffix(".summary.json")
    summary.write_text(json.dumps(report.model_dump(mode="json"), indent=1))
    return 0


def run_eval(dataset: str, *, split: str, limit: int | None, samples: int, mode: str, data_dir: Path | None,
             out: Path | None, concurrency: int, seed: int) -> int:
    from agent.datasets import DatasetError
    from agent.modelstore import ModelSpecError
    from agent.solver import SolveError
    from agent.trajectory import Mode

    if mode not in {m.value for m in Mode}:
        return _fail(f"unknown mode {mode!r}: use tir, cot or arc")
    if samples < 1 or concurrency < 1:
        return _fail("--samples and --concurrency must be at least 1")
    try:
        return asyncio.run(_eval(dataset, split, limit, samples, mode, data_dir, out, concurrency, seed))
    except (ModelSpecError, SolveError, DatasetError) as exc:
        return _fail(str(exc))
