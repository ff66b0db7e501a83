"""``mathagent eval``: greedy and maj@k accuracy on a data set; every trajectory to a JSONL file.

Every expected failure (bad settings, unknown model, missing data, no sandbox, bad arguments)
ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.configuration import load
from agent.runtime import Resources
from agent.settings import AgentSettings
from mathagent.errors import fail


async def _eval(dataset: str, split: str, limit: int | None, samples: int, mode: str, data_dir: Path | None,
                out: Path | None, concurrency: int, seed: int) -> int:
    from agent.datasets import load_problems
    from agent.evaluate import ProblemOutcome, evaluate
    from agent.trajectory import Mode

    settings = load(AgentSettings)
    problems = load_problems(dataset, split, data_dir=data_dir, limit=limit, seed=seed)
    if not problems:
        return fail(f"{dataset}/{split}: no problems")
    out = out or Path(f"eval-{dataset}-{split}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    console = Console(stderr=True)
    async with Resources(settings) as res:
        engine = await res.engine()
        try:
            sandbox = await res.sandbox()
            solver = res.solver(engine, sandbox, await res.trajectory_log())
            console.print(f"[dim]{res.sandbox_note}; model {settings.model} ({engine.model_version}); "
                          f"{len(problems)} problems, mode {mode}, samples {samples}, {concurrency} at a time[/]")
            correct = finished = 0
            t0 = time.monotonic()
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=console, disable=not console.is_terminal)
            task = progress.add_task(f"{dataset}/{split} greedy 0/0", total=len(problems))

            def done(o: ProblemOutcome) -> None:
                # a bar on a terminal; elsewhere (a log, CI, a pipe) one line per problem as it finishes
                nonlocal correct, finished
                correct += int(o.greedy_correct)
                finished += 1
                progress.update(task, advance=1, description=f"{dataset}/{split} greedy {correct}/{finished}")
                if not console.is_terminal:
                    maj = "" if o.maj_answer is None else f", maj@{samples} {o.maj_answer}"
                    console.print(f"[{finished}/{len(problems)}] {o.problem_id}: {o.greedy_answer} "
                                  f"({'correct' if o.greedy_correct else 'wrong'}, gold {o.gold}{maj}); "
                                  f"{correct}/{finished} correct, {time.monotonic() - t0:.0f}s", markup=False,
                                  highlight=False, soft_wrap=True)

            with progress:
                report = await evaluate(solver, problems, dataset=dataset, mode=Mode(mode), samples=samples,
                                        concurrency=concurrency, out_path=out, seed=seed, on_done=done)
        finally:
            await engine.aclose()
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
    from agent.runtime import SandboxStartError
    from agent.solver import SolveError
    from agent.trajectory import Mode

    if mode not in {m.value for m in Mode}:
        return fail(f"unknown mode {mode!r}: use tir, cot or arc")
    if samples < 1 or concurrency < 1:
        return fail("--samples and --concurrency must be at least 1")
    try:
        return asyncio.run(_eval(dataset, split, limit, samples, mode, data_dir, out, concurrency, seed))
    except (ModelSpecError, SolveError, DatasetError, SandboxStartError) as exc:
        return fail(str(exc))
