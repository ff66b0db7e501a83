"""The FastAPI gateway: state built once in the lifespan, thin routers on top."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from api.routes import health
from api.settings import GatewaySettings
from api.state import AppState

log = logging.getLogger("mathagent.api")


async def build_state(settings: GatewaySettings, *, load_engine: bool = True) -> AppState:
    from sandbox.client import SandboxClient

    from agent import modelstore

    state = AppState(settings=settings, redis=aioredis.from_url(settings.redis_url))
    state.sandbox = SandboxClient(settings.sandbox_url)
    if load_engine:
        from agent.engines.transformers_engine import TransformersEngine

        resolved = modelstore.resolve(settings.model, settings.state_dir)
        state.engine = TransformersEngine.from_path(resolved.path, resolved.version)
        log.info("model %s loaded (version %s)", settings.model, resolved.version)
    return state


async def close_state(state: AppState) -> None:
    if state.engine is not None:
        await state.engine.aclose()
    if state.sandbox is not None:
        await state.sandbox.aclose()
    await state.redis.aclose()


def create_app(settings: GatewaySettings, *, state: AppState | None = None) -> FastAPI:
    """Build the app. Pass ``state`` to reuse pre-built components (tests); else the lifespan builds them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = state is None
        app.state.mathagent = state if state is not None else await build_state(settings)
        try:
            yield
        finally:
            if own:
                await close_state(app.state.mathagent)

    app = FastAPI(title="mathagent", version="0.1.0", lifespan=lifespan)
    app.include_router(health.router)
    return app
