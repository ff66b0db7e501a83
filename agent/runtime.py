"""Building the agent's parts from one :class:`AgentSettings`: engines, the sandbox, the solver.

:class:`Resources` is the one holder every long job uses (a CLI command, a retrain run, an
experiment): the sandbox is connected on first use and closed with the holder, engines are
built for any checkpoint, and the solver's settings come from the process settings.

The sandbox: connect to ``MATHAGENT_SANDBOX_URL``; if no service answers there, start a private
one (``python -m sandbox serve`` on a socket in a temporary directory, strict unless
``MATHAGENT_DEV=1``) for as long as the holder lives, and say so (:attr:`Resources.sandbox_note`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from agent.engines.base import Engine
from agent.loop import Sandbox
from agent.settings import AgentSettings

if TYPE_CHECKING:
    from agent.engines.openai_http import OpenAIHTTPEngine
    from agent.solver import Solver, SolverSettings
    from agent.trajlog import TrajectoryLog, TrajectorySink

log = logging.getLogger(__name__)


class SandboxStartError(RuntimeError):
    """No sandbox service answers and a private one could not start (the message says why and what to do)."""


def build_engine(settings: AgentSettings, path: Path | None = None, version: str | None = None) -> Engine:
    """The in-process engine on ``path`` (default: the configured model) under ``version``."""
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import resolve

    if path is None:
        resolved = resolve(settings.model, settings.state_dir)
        path, version = resolved.path, version or resolved.version
    return TransformersEngine.from_path(path, version=version or Path(path).name, threads=settings.torch_threads)


def build_vllm_engine(settings: AgentSettings, tokenizer_path: Path | None = None) -> OpenAIHTTPEngine:
    """An engine on the configured vLLM server (``MATHAGENT_VLLM_URL``), requests naming its base
    weights by ``MATHAGENT_VLLM_MODEL`` (default: the resolved MATHAGENT_MODEL path, what vLLM
    calls a model started without ``--served-model-name``). The weights vLLM was started with are
    MATHAGENT_MODEL: its label ``default`` is reported as that model's content id. The tokenizer is
    read locally, from ``tokenizer_path`` (default: the configured model)."""
    from agent.engines.openai_http import OpenAIHTTPEngine
    from agent.modelstore import resolve

    resolved = resolve(settings.model, settings.state_dir)
    served = settings.vllm_model or str(resolved.path)
    return OpenAIHTTPEngine.from_path(settings.vllm_url, tokenizer_path or resolved.path, model=served,
                                      version=resolved.version)


class Resources:
    """A sandbox, engines and solver settings, for as long as one job runs (``async with``)."""

    def __init__(self, settings: AgentSettings, *, solver_settings: SolverSettings | None = None) -> None:
        self.settings = settings
        self._solver_settings = solver_settings
        self._stack = contextlib.AsyncExitStack()
        self._sandbox: Sandbox | None = None
        self.sandbox_note = ""

    async def __aenter__(self) -> Resources:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._sandbox = None

    def solver_settings(self) -> SolverSettings:
        return self._solver_settings or self.settings.solver_settings()

    async def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = await self._stack.enter_async_context(self._open_sandbox())
            log.info("%s", self.sandbox_note)
        return self._sandbox

    async def engine(self, path: Path | None = None, version: str | None = None) -> Engine:
        """An engine on the checkpoint at ``path`` (default: the configured model), closed by the caller."""
        return await asyncio.to_thread(build_engine, self.settings, path, version)

    def solver(self, engine: Engine, sandbox: Sandbox | None, trajectory_log: TrajectorySink | None = None) -> Solver:
        from agent.solver import Solver

        return Solver(engine, sandbox, trajectory_log, self.solver_settings())

    async def trajectory_log(self) -> TrajectoryLog:
        """The Redis trajectory log of the settings (spooled locally while Redis is down), closed with the holder."""
        from agent.trajlog import TrajectoryLog

        s = self.settings
        tlog = TrajectoryLog(s.redis_url, s.spool_dir, prefix=s.redis_prefix, maxlen=s.stream_maxlen)
        self._stack.push_async_callback(tlog.aclose)
        return tlog

    @contextlib.asynccontextmanager
    async def _open_sandbox(self) -> AsyncIterator[Sandbox]:
        from sandbox.client import SandboxClient, SandboxUnreachable
        from sandbox.local import local_service

        url = self.settings.sandbox_url
        client = SandboxClient(url)
        try:
            await client.health()
        except SandboxUnreachable:
            await client.aclose()
        else:
            self.sandbox_note = f"sandbox at {url}"
            try:
                yield client
            finally:
                await client.aclose()
            return
        mode = "development mode, MATHAGENT_DEV=1" if self.settings.dev else "strict"
        async with contextlib.AsyncExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mathagent-sandbox-"))
            try:
                local = await stack.enter_async_context(local_service(tmp, dev=self.settings.dev))
            except RuntimeError as exc:
                last = str(exc).strip().splitlines()[-1:] or [""]
                raise SandboxStartError(
                    f"no sandbox answers at {url} and a private one could not start ({mode}): {last[0]}. "
                    "Start the service (`mathagent up`, or `python -m sandbox serve`), or set MATHAGENT_DEV=1 "
                    "to run without the protections this host lacks") from None
            self.sandbox_note = f"no sandbox at {url}: started a private one for this command ({mode})"
            yield local
