"""The HTTP face of the supervisor: ``POST /v1/execute``, ``DELETE /v1/sessions/{id}``, ``GET /healthz``.

Served on a unix socket created with mode 0600 (only the owner may connect) or on loopback HTTP.
Never bind a public address: there is no authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sandbox.result import ExecResult, ExecStatus
from sandbox.settings import SandboxSettings
from sandbox.supervisor import Supervisor

SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"


class ExecRequest(BaseModel):
    code: str
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)
    timeout_s: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)


def create_app(supervisor: Supervisor) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await supervisor.aclose()

    app = FastAPI(title="mathagent sandbox", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.post("/v1/execute", response_model=ExecResult)
    async def execute(req: ExecRequest) -> ExecResult:
        return await supervisor.execute(req.code, session_id=req.session_id, timeout_s=req.timeout_s,
                                        memory_mb=req.memory_mb)

    @app.delete("/v1/sessions/{session_id}")
    async def close_session(session_id: str) -> dict[str, Any]:
        return {"closed": await supervisor.close_session(session_id)}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        h = supervisor.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.exception_handler(Exception)
    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        r = ExecResult(status=ExecStatus.sandbox_error, detail=f"sandbox service error: {type(exc).__name__}")
        return JSONResponse(r.model_dump(mode="json"), status_code=500)

    return app


def _unix_listener(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def serve(settings: SandboxSettings, socket_path: str | None = None, port: int | None = None) -> None:
    import uvicorn

    supervisor = Supervisor(settings)
    try:
        await supervisor.start()
    except BaseException:
        await supervisor.aclose()
        raise
    app = create_app(supervisor)
    if port is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(512)
        sock.setblocking(False)
    else:
        assert socket_path is not None
        sock = _unix_listener(socket_path)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        await supervisor.aclose()
        sock.close()
        if socket_path:
            with contextlib.suppress(OSError):
                os.unlink(socket_path)


def run(settings: SandboxSettings, socket_path: str | None = None, port: int | None = None) -> None:
    asyncio.run(serve(settings, socket_path, port))
