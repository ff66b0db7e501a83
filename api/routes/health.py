"""Liveness and component health."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from api.deps import State

router = APIRouter(tags=["health"])

TRAINER_HEALTH_KEY = "arq:queue:health-check"  # written by the arq worker every health_check_interval


async def _redis(state: State) -> dict[str, Any]:
    try:
        await asyncio.wait_for(state.redis.ping(), 2.0)
        return {"status": "up", "url": _redact(state.settings.redis_url)}
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}


async def _sandbox(state: State) -> dict[str, Any]:
    if state.sandbox is None:
        return {"status": "down", "error": "no sandbox client"}
    try:
        info = await asyncio.wait_for(state.sandbox.health(), 3.0)
        return {"status": "up", **info}
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:200]}


async def _trainer(state: State) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(state.redis.get(TRAINER_HEALTH_KEY), 2.0)
    except Exception:
        return {"status": "unknown", "error": "redis down"}
    return {"status": "up", "detail": raw.decode()} if raw else {"status": "down"}


def _redact(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    """Liveness, plus the state of every component (never fails because a component is down)."""
    redis_s, sandbox_s, trainer_s = await asyncio.gather(_redis(state), _sandbox(state), _trainer(state))
    engine = state.engine
    model = (
        {"status": "up", "version": engine.model_version, "spec": state.settings.model}
        if engine is not None
        else {"status": "down"}
    )
    return {
        "status": "ok",
        "components": {"gateway": {"status": "up"}, "model": model, "redis": redis_s,
                       "sandbox": sandbox_s, "trainer": trainer_s},
    }
