"""Building the agent's parts from one :class:`AgentSettings`: engine, sandbox client, trajectory
log, solver. Used by the CLI commands (solve, eval, bench agent).

The sandbox: connect to ``MATHAGENT_SANDBOX_URL``; if no service answers there, start an
ephemeral local one (``python -m sandbox serve`` on a socket in a temporary directory) for the
duration of the command.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.engines.base import Engine
from agent.loop import Sandbox
from agent.settings import AgentSettings
from agent.solver import Solver, SolverSettings
from agent.trajlog import TrajectoryLog

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: AgentSettings
    engine: Engine
    sandbox: Sandbox
    trajectory_log: TrajectoryLog
    solver: Solver
    sandbox_note: str  # "connected to ..." / "ephemeral ..." for the user


def solver_settings(settings: AgentSettings) -> SolverSettings:
    return SolverSettings(
        max_turns=settings.max_turns,
        max_new_tokens=settings.max_new_tokens,
        max_total_tokens=settings.max_total_tokens,
        sandbox_timeout_s=settings.sandbox_timeout_s,
        observation_max_chars=settings.observation_max_chars,
    )


def build_engine(settings: AgentSettings) -> Engine:
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import resolve

    resolved = resolve(settings.model, settings.state_dir)
    return TransformersEngine.from_path(resolved.path, version=resolved.version, threads=settings.torch_threads)


@contextlib.asynccontextmanager
async def open_sandbox(settings: AgentSettings) -> AsyncIterator[tuple[Sandbox, str]]:
    from sandbox.client import SandboxClient, SandboxUnreachable

    client = SandboxClient(settings.sandbox_url)
    try:
        await client.health()
    except SandboxUnreachable:
        await client.aclose()
        from sandbox.testing import running_sandbox

        with tempfile.TemporaryDirectory(prefix="mathagent-sandbox-") as tmp:
            async with running_sandbox(tmp) as ephemeral:
                yield ephemeral, f"no sandbox at {settings.sandbox_url}: started an ephemeral local one"
        return
    try:
        yield client, f"sandbox at {settings.sandbox_url}"
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def open_runtime(settings: AgentSettings, *, engine: Engine | None = None) -> AsyncIterator[Runtime]:
    engine = engine or build_engine(settings)
    tlog = TrajectoryLog(settings.redis_url, settings.spool_dir, prefix=settings.redis_prefix, maxlen=settings.stream_maxlen)
    try:
        async with open_sandbox(settings) as (sandbox, note):
            solver = Solver(engine, sandbox, tlog, solver_settings(settings))
            yield Runtime(settings, engine, sandbox, tlog, solver, note)
    finally:
        await tlog.aclose()
        await engine.aclose()
