"""Liveness (``/healthz``), readiness (``/readyz``) and Prometheus metrics (``/metrics``).

Anyone sees each component's status (and the model version, which every answer carries
anyway); the details (Redis address, the sandbox's processes and uid range, the trainer's
heartbeat, error texts) only a caller with the admin token sees.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import State

router = APIRouter(tags=["health"])

PUBLIC_FIELDS = {"status", "version"}


def _shown(request: Request, state: State, checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every detail for the admin; each component's status (and the model version) for anyone else."""
    assert state.callers is not None
    if state.callers.is_admin(request):
        return checks
    return {name: {k: v for k, v in check.items() if k in PUBLIC_FIELDS} for name, check in checks.items()}


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
        if hasattr(info, "model_dump"):
            info = info.model_dump(mode="json")
        detail = info if isinstance(info, dict) else {}
        return {"status": "up" if detail.get("status", "ok") == "ok" else "down", "detail": detail}
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:200]}


async def _trainer(state: State) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(state.redis.get(state.settings.health_check_key), 2.0)
    except Exception:
        return {"status": "unknown", "error": "redis down"}
    return {"status": "up", "detail": raw.decode()} if raw else {"status": "down"}


def _model(state: State) -> dict[str, Any]:
    if state.engine is None or state.solver is None:
        return {"status": "down", "error": "model not loaded"}
    return {"status": "up", "version": state.model_version, "spec": state.settings.model,
            "engine": state.settings.engine, "public_id": state.settings.public_model_id}


def _redact(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@router.get("/healthz")
async def healthz(request: Request, state: State) -> dict[str, Any]:
    """Liveness, plus the state of every component (never fails because a component is down);
    details with `Authorization: Bearer <admin token>`."""
    redis_s, sandbox_s, trainer_s = await asyncio.gather(_redis(state), _sandbox(state), _trainer(state))
    components = {"gateway": {"status": "up"}, "model": _model(state), "redis": redis_s, "sandbox": sandbox_s,
                  "trainer": trainer_s}
    return {"status": "ok", "components": _shown(request, state, components)}


@router.get("/readyz", responses={503: {"description": "a component the gateway needs is down"}})
async def readyz(request: Request, state: State) -> JSONResponse:
    """Ready to solve: the model is loaded, the sandbox answers, Redis answers (each listed);
    details with `Authorization: Bearer <admin token>`."""
    redis_s, sandbox_s = await asyncio.gather(_redis(state), _sandbox(state))
    checks = {"model": _model(state), "sandbox": sandbox_s, "redis": redis_s}
    ready = all(c["status"] == "up" for c in checks.values())
    return JSONResponse({"ready": ready, "checks": _shown(request, state, checks)}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus exposition: requests and latency by route, episodes, sandbox calls, tokens, version."""
    if state.model_version:
        state.metrics.set_version(state.model_version)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
