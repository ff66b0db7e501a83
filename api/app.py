"""The FastAPI gateway: state built once in the lifespan, thin routers on top."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors, guards
from api.metrics import Metrics, MetricsMiddleware
from api.routes import admin, chat, health, page, solve, trajectories
from api.settings import GatewaySettings
from api.state import AppState
from api.swap import SwapManager, version_source
from api.swap_backends import Backend, TransformersBackend, VersionSource, VLLMBackend, load_weights
from trainer.registry import CorruptVersionError, Registry

if TYPE_CHECKING:
    from agent.engines.base import VersionedEngine

log = logging.getLogger("mathagent.api")


def registry_of(settings: GatewaySettings) -> Registry:
    """The model version registry the trainer publishes into (``<state_dir>/registry``)."""
    return Registry(settings.registry_path)


def base_source(settings: GatewaySettings) -> VersionSource:
    """The configured model (MATHAGENT_MODEL) as a version outside the registry."""
    from agent import modelstore

    resolved = modelstore.resolve(settings.model, settings.state_dir)
    return VersionSource(version=resolved.version, path=resolved.path, kind="full", in_registry=False)


def build_engine(settings: GatewaySettings) -> VersionedEngine:
    """The inference engine the settings name: in-process transformers, or a vLLM server.

    The in-process engine starts on the registry's active version when there is one (checksums
    verified first), else on MATHAGENT_MODEL. A vLLM server is started on MATHAGENT_MODEL by its
    own deployment; the registry's active version is swapped onto it by :func:`build_state`."""
    from agent import modelstore

    if settings.engine == "vllm":  # the tokenizer is read locally; generation happens on the vLLM server
        from agent.runtime import build_vllm_engine

        return build_vllm_engine(settings)
    from agent.engines.transformers_engine import TransformersEngine

    resolved = modelstore.resolve(settings.model, settings.state_dir)
    registry = registry_of(settings)
    active = registry.active()
    if active is None:
        return TransformersEngine.from_path(resolved.path, resolved.version, threads=settings.torch_threads)
    try:
        manifest = registry.verify(active)
    except CorruptVersionError as exc:
        raise RuntimeError(f"the registry's active version is corrupt ({exc}): roll back with "
                           f"`python -m trainer` or fix {registry.root}, then restart") from exc
    source = version_source(registry, manifest)
    model = load_weights(source, settings.state_dir)
    log.info("serving the registry's active version %s (%s)", active, manifest.kind)
    return TransformersEngine(model, modelstore.load_tokenizer(resolved.path), active, threads=settings.torch_threads)


def build_swap(settings: GatewaySettings, engine: VersionedEngine, metrics: Metrics, *,
               base: VersionSource | None) -> SwapManager:
    """The hot-swap state machine over ``engine`` (either kind) and the registry."""
    from agent.engines.openai_http import OpenAIHTTPEngine
    from agent.engines.transformers_engine import TransformersEngine

    backend: Backend
    if isinstance(engine, OpenAIHTTPEngine):
        backend = VLLMBackend(engine)
    elif isinstance(engine, TransformersEngine):
        backend = TransformersBackend(engine, settings.state_dir)
    else:
        raise TypeError(f"no hot-swap backend for {type(engine).__name__}")
    return SwapManager(engine, backend, registry_of(settings), base=base, metrics=metrics, state_dir=settings.state_dir)


async def build_state(settings: GatewaySettings, *, engine: VersionedEngine | None = None,
                      load_engine: bool = True, engine_is_base: bool = False) -> AppState:
    """Connect every component. ``engine``: use this one (tests); else load the configured model.
    ``engine_is_base``: the engine handed in serves the configured model (a rollback target)."""
    from agent.solver import Solver
    from agent.trajlog import TrajectoryLog
    from sandbox.client import SandboxClient

    state = AppState(settings=settings, redis=aioredis.from_url(settings.redis_url, socket_connect_timeout=2.0))
    state.sandbox = SandboxClient(settings.sandbox_url)
    state.trajectory_log = TrajectoryLog(settings.redis_url, settings.spool_dir, prefix=settings.redis_prefix)
    built_here = engine is None and load_engine
    if built_here:
        engine = await asyncio.to_thread(build_engine, settings)
        log.info("model %s loaded (version %s)", settings.model, engine.model_version)
    state.engine = engine
    if engine is not None:
        state.solver = Solver(engine, state.sandbox, state.trajectory_log, settings.solver_settings())
        # the configured model, a rollback target outside the registry (an engine handed in by a
        # caller, as in tests, is not assumed to be it)
        base = await asyncio.to_thread(base_source, settings) if built_here or engine_is_base else None
        state.swap = build_swap(settings, engine, state.metrics, base=base)
        await start_swap(state)
        state.metrics.set_version(str(engine.model_version))
    state.tasks.append(asyncio.create_task(state.trajectory_log.run_replayer()))
    return state


async def start_swap(state: AppState) -> None:
    """Bring a vLLM server to the registry's active version (the in-process engine loads it
    directly), and keep it there: a server that restarts is brought back (``watch_server``)."""
    swap = state.swap
    assert swap is not None
    swap._mark_serving()
    if not isinstance(swap.backend, VLLMBackend):
        return
    await swap.backend.label_base()
    active = swap.registry.active() if swap.registry is not None else None
    if active is not None and active != swap.active:
        log.info("bringing the vLLM server to the registry's active version %s", active)
        await swap.deploy(active)
    state.tasks.append(asyncio.create_task(swap.watch_server(state.settings.vllm_check_interval_s),
                                           name="vllm-watch"))


async def close_state(state: AppState, *, close_engine: bool = True) -> None:
    for task in state.tasks:
        task.cancel()
    for task in state.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    state.tasks.clear()
    if state.swap is not None:
        await state.swap.aclose()
    pool = state.extra.pop("arq", None)
    if pool is not None:
        with contextlib.suppress(Exception):
            await pool.aclose()
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
        if built.swap is not None:
            built.swap.metrics = metrics
            built.swap._mark_serving()
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
    guards.install(app, settings)  # Host allow-list, body size and read time
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it sees the 400/408/413s too
    return app

