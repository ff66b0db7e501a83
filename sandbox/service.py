"""The HTTP face of the supervisor: ``POST /v1/execute``, ``DELETE /v1/sessions/{id}``, ``GET /healthz``.

Served on a unix socket created with mode 0600 (only the owner may connect) or on loopback HTTP.
Never bind a public address: there is no authentication.

The hot route, ``POST /v1/execute``, is a plain ASGI handler in front of the FastAPI app: the request is
still validated by the same pydantic model (``ExecRequest.model_validate_json``, pydantic's Rust core)
and the answer is the same ``ExecResult`` JSON, but FastAPI's dependency resolution, its response-model
re-validation and its middleware stack (~0.3 ms per call here) stay off the path a session cell takes.
The rest (health, session deletion) is ordinary FastAPI. Served by uvicorn on uvloop with the
httptools parser when they are installed (~0.5 ms less per round trip than asyncio + h11 here).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from sandbox.result import ExecResult, ExecStatus
from sandbox.settings import SandboxSettings
from sandbox.supervisor import Supervisor

log = logging.getLogger("sandbox.service")

SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"


class ExecRequest(BaseModel):
    code: str
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)
    timeout_s: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ServiceApp:
    """ASGI entry point: ``POST /v1/execute`` handled directly, everything else by ``api``."""

    def __init__(self, supervisor: Supervisor, api: FastAPI) -> None:
        self.supervisor = supervisor
        self.api = api
        # JSON may escape every character of the code as \uXXXX: allow that, refuse anything larger.
        self.max_body = 6 * supervisor.settings.max_code_bytes + 4096

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/execute" and scope["method"] == "POST":
            await self._execute(receive, send)
        else:
            await self.api(scope, receive, send)

    async def _execute(self, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _respond(send, 413, b'{"detail":"request body too large"}')
                return
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        try:
            req = ExecRequest.model_validate_json(b"".join(chunks))
        except ValidationError as e:
            body = json.dumps({"detail": e.errors(include_url=False, include_context=False,
                                                  include_input=False)}).encode()
            await _respond(send, 422, body)
            return
        try:
            result = await self.supervisor.execute(req.code, session_id=req.session_id, timeout_s=req.timeout_s,
                                                   memory_mb=req.memory_mb)
            status = 200
        except Exception as exc:  # never a traceback to the caller
            log.exception("execute failed")
            result = ExecResult(status=ExecStatus.sandbox_error, detail=f"sandbox service error: {type(exc).__name__}")
            status = 500
        await _respond(send, status, result.model_dump_json().encode())


def create_app(supervisor: Supervisor) -> ServiceApp:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await supervisor.aclose()

    app = FastAPI(title="mathagent sandbox", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.post("/v1/execute", response_model=ExecResult)
    async def execute(req: ExecRequest) -> ExecResult:  # documents the route; ServiceApp serves it
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

    return ServiceApp(supervisor, app)


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
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            http="httptools" if _has("httptools") else "h11")
    server = uvicorn.Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        await supervisor.aclose()
        sock.close()
        if socket_path:
            with contextlib.suppress(OSError):
                os.unlink(socket_path)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(settings: SandboxSettings, socket_path: str | None = None, port: int | None = None) -> None:
    if _has("uvloop"):
        import uvloop

        uvloop.run(serve(settings, socket_path, port))
    else:
        asyncio.run(serve(settings, socket_path, port))
