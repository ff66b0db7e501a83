"""``mathagent solve``: one problem through the agent, its trajectory shown (or printed as JSON).

Every expected failure (bad settings, unknown model, no sandbox, bad arguments) ends with one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio

from rich.console import Console

from agent.configuration import load
from agent.runtime import Resources
from agent.settings import AgentSettings
from mathagent.errors import fail


async def _solve(problem: str, gold: str | None, samples: int, revisions: int, mode: str, max_turns: int | None,
                 temperature: float | None, seed: int | None, as_json: bool) -> int:
    from agent.render import render_result

    settings = load(AgentSettings)
    err = Console(stderr=True)
    async with Resources(settings) as res:
        with err.status("loading the model and the sandbox..."):
            engine = await res.engine()
            sandbox = await res.sandbox()
            tlog = await res.trajectory_log()
        try:
            if not as_json:
                err.print(f"[dim]{res.sandbox_note}; model {settings.model} ({engine.model_version})[/]")
            with err.status("solving..."):
                result = await res.solver(engine, sandbox, tlog).solve(
                    problem, gold=gold, mode=mode, samples=samples, revisions=revisions, max_turns=max_turns,
                    temperature=temperature, seed=seed, source="api")
            if as_json:
                print(result.model_dump_json())
            else:
                render_result(result, Console())
                spooled = len(tlog.spooled())
                where = f"spooled locally ({spooled} waiting for Redis)" if spooled else f"logged to {settings.redis_url}"
                err.print(f"[dim]{len(result.trajectories)} trajectories {where}[/]")
        finally:
            await engine.aclose()
    return 0


def run_solve(problem: str, *, gold: str | None, samples: int, revisions: int, mode: str, max_turns: int | None,
              temperature: float | None, seed: int | None, as_json: bool) -> int:
    from agent.modelstore import ModelSpecError
    from agent.runtime import SandboxStartError
    from agent.solver import SolveError

    try:
        return asyncio.run(_solve(problem, gold, samples, revisions, mode, max_turns, temperature, seed, as_json))
    except (ModelSpecError, SolveError, SandboxStartError) as exc:
        return fail(str(exc))
