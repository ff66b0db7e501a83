"""Async client of the sandbox service. Transport failures become ``sandbox_error`` results, never
exceptions into the agent loop; only ``health()`` raises (``SandboxUnreachable``)."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.result import ExecResult, ExecStatus


class SandboxUnreachable(RuntimeError):
    pass


def _transport(url: str) -> tuple[httpx.AsyncHTTPTransport, str]:
    if url.startswith("unix://"):
        path = url[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute: {url!r}")
        return httpx.AsyncHTTPTransport(uds=path), "http://sandbox"
    if url.startswith("http://"):
        return httpx.AsyncHTTPTransport(), url.rstrip("/")
    raise ValueError(f"sandbox url must be unix:///abs/path.sock or http://127.0.0.1:PORT, got {url!r}")


class SandboxClient:
    def __init__(self, url: str, *, extra_timeout_s: float = 60.0) -> None:
        self.url = url
        transport, base = _transport(url)
        self._extra = extra_timeout_s
        self._http = httpx.AsyncClient(transport=transport, base_url=base, timeout=httpx.Timeout(30.0))

    async def execute(self, code: str, *, session_id: str | None = None, timeout_s: float | None = None,
                      memory_mb: int | None = None) -> ExecResult:
        body: dict[str, Any] = {"code": code}
        if session_id is not None:
            body["session_id"] = session_id
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if memory_mb is not None:
            body["memory_mb"] = memory_mb
        # A session cell may first replay earlier cells, so allow well past the cell's own limit.
        wait = (timeout_s or 10.0) * 4 + self._extra
        try:
            r = await self._http.post("/v1/execute", json=body, timeout=wait)
        except httpx.HTTPError as e:
            return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                              detail=f"sandbox unreachable: {type(e).__name__}")
        if r.status_code == 422:
            return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                              detail=f"sandbox rejected the request: {r.text[:300]}")
        try:
            return ExecResult.model_validate_json(r.content)
        except ValueError:
            return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                              detail=f"sandbox answered HTTP {r.status_code} without a result")

    async def close_session(self, session_id: str) -> None:
        try:
            await self._http.delete(f"/v1/sessions/{session_id}")
        except httpx.HTTPError:
            pass

    async def health(self) -> dict[str, Any]:
        try:
            r = await self._http.get("/healthz", timeout=5)
        except httpx.HTTPError as e:
            raise SandboxUnreachable(f"no sandbox service at {self.url}: {type(e).__name__}") from e
        if r.status_code not in (200, 503):
            raise SandboxUnreachable(f"sandbox at {self.url} answered HTTP {r.status_code}")
        data: dict[str, Any] = r.json()
        return data

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
