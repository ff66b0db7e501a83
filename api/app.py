"""The FastAPI gateway: state built once in the lifespan, thin routers on top."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors
from api.limits import BodyLimitMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.routes import admin, chat, health, page, solve, trajectories
from api.settings import GatewaySettings
from api.state import AppState

log = logging.getLogger("mathagent.api")


def build_engine(settings: GatewaySettings):  # type: ignore[no-untyped-def]
    """The inference engine the settings name: in-process transformers, or a vLLM server."""
    from agent import modelstore

    resolved = modelstore.resolve(settings.model, settings.state_dir)
    if settings.engine == "vllm":  # the tokenizer is read locally; generation happens on the vLLM server
        from agent.engines.openai_http import OpenAIHTTPEngine

        served = settings.vllm_model or str(resolved.path)
        return OpenAIHTTPEngine.from_path(settings.vllm_url, resolved.path, model=served, version=resolved.version)
    from agent.engines.transformers_engine import TransformersEngine

    return TransformersEngine.from_path(resolved.path, resolved.version, threads=settings.torch_threads)


def solver_settings(settings: GatewaySettings):  # type: ignore[no-untyped-def]
    from agent.solver import SolverSettings

    return SolverSettings(
        max_turns=settings.max_turns,
        max_new_tokens=settings.max_new_tokens,
        max_total_tokens=settings.max_total_tokens,
        sandbox_timeout_s=settings.sandbox_timeout_s,
        max_samples=settings.max_samples,
        max_revisions=settings.max_revisions,
    )


async def build_state(settings: GatewaySettings, *, engine: object | None = None, load_engine: bool = True) -> AppState:
    """Connect every component. ``engine``: use this one (tests); else load the configured model."""
    from agent.solver import Solver
    from agent.trajlog import TrajectoryLog
    from sandbox.client import SandboxClient

    state = AppState(settings=settings, redis=aioredis.from_url(settings.redis_url, socket_connect_timeout=2.0))
    state.sandbox = SandboxClient(settings.sandbox_url)
    state.trajectory_log = TrajectoryLog(settings.redis_url, settings.spool_dir, prefix=settings.redis_prefix)
    if engine is None and load_engine:
        engine = await asyncio.to_thread(build_engine, settings)
        log.info("model %s loaded (version %s)", settings.model, engine.model_version)  # type: ignore[attr-defined]
    state.engine = engine
    if engine is not None:
        state.solver = Solver(engine, state.sandbox, state.trajectory_log, solver_settings(settings))  # type: ignore[arg-type]
        state.metrics.set_version(str(engine.model_version))  # type: ignore[attr-defined]
    state.tasks.append(asyncio.create_task(state.trajectory_log.run_replayer()))
    return state


async def close_state(state: AppState, *, close_engine: bool = True) -> None:
    for task in state.tasks:
        task.cancel()
    for task in state.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    state.tasks.clear()
    if close_engine and state.engine is not None:
        await state.engine.aclose()
    if state.sandbox is not None:
        await state.sandbox.aclose()
    if state.trajectory_log is not None:
        await state.trajectory_log.aclose()
    await state.redis.aclose()


def create_app(settings: GatewaySettings, *, state: AppState | None = None) -> FastAPI:
    """Build the app. Pass ``state`` to reuse pre-built components (tests); else the lifespan builds them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = state is None
        built = state if state is not None else await build_state(settings)
        built.metrics = metrics  # one registry per app, shared with the middleware
        if built.model_version:
            metrics.set_version(built.model_version)
        app.state.mathagent = built
        try:
            yield
        finally:
            if own:
                await close_state(app.state.mathagent)

    metrics = Metrics()
    app = FastAPI(
        title="mathagent",
        version="0.1.0",
        description="A tool-integrated math agent: solve API, OpenAI-compatible chat, feedback, admin.",
        lifespan=lifespan,
    )
    errors.install(app)
    for router in (health.router, solve.router, chat.router, trajectories.router, admin.router, page.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it sees the 413s too
    return app

