"""Async client of the sandbox service. Transport failures become ``sandbox_error`` results, never
exceptions into the agent loop; only ``health()`` raises (``SandboxUnreachable``).

One ``SandboxClient`` keeps its HTTP/1.1 connections alive (over the unix socket or loopback TCP) and
reuses them: one connection per concurrent caller, idle ones kept for the next call.
Why not httpx: measured here, an httpx round trip for a session cell cost 1.35 ms against 0.56 ms for
the same request written directly, i.e. httpx's pool and anyio layers cost more than the sandbox's own
work on the hot path. The HTTP/1.1 parsing is still a library's (h11, the state machine httpx's core
uses); this module only opens, reuses and closes connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import quote

import h11

from sandbox.result import ExecResult, ExecStatus


class SandboxUnreachable(RuntimeError):
    pass


class _TransportError(Exception):
    """The service could not be reached or broke the connection."""


_READ = 1 << 16


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.loop = asyncio.get_running_loop()

    def reusable(self) -> bool:
        # A connection belongs to the event loop that opened it (a client shared across loops reconnects).
        return (self.loop is asyncio.get_running_loop() and not self.reader.at_eof()
                and not self.writer.is_closing())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _parse_url(url: str) -> tuple[str | None, str, int, str]:
    """(unix socket path or None, host, port, Host header)."""
    if url.startswith("unix://"):
        path = url[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute: {url!r}")
        return path, "", 0, "sandbox"
    if url.startswith("http://"):
        hostport = url[len("http://"):].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sandbox url needs host:port, got {url!r}")
        return None, host.strip("[]"), int(port), hostport
    raise ValueError(f"sandbox url must be unix:///abs/path.sock or http://127.0.0.1:PORT, got {url!r}")


class SandboxClient:
    def __init__(self, url: str, *, extra_timeout_s: float = 60.0) -> None:
        self.url = url
        self._uds, self._host, self._port, self._host_header = _parse_url(url)
        self._extra = extra_timeout_s
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._closed = False

    # ---- connections --------------------------------------------------------------------

    async def _connect(self) -> _Conn:
        try:
            if self._uds is not None:
                reader, writer = await asyncio.open_unix_connection(self._uds, limit=_READ)
            else:
                reader, writer = await asyncio.open_connection(self._host, self._port, limit=_READ)
        except OSError as e:
            raise _TransportError(type(e).__name__) from e
        c = _Conn(reader, writer)
        self._open.add(c)
        return c

    def _discard(self, c: _Conn) -> None:
        self._open.discard(c)
        c.close()

    async def _exchange(self, c: _Conn, method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        conn = c.h11
        headers = [("host", self._host_header)]
        if body is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        c.writer.write(out)
        status = 0
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await c.reader.read(_READ)
                if not data and conn.their_state is h11.SEND_RESPONSE:
                    raise EOFError("connection closed before a response")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("connection closed")

    async def _request(self, method: str, target: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        if self._closed:
            raise _TransportError("client closed")
        for attempt in (0, 1):
            reused = False
            while self._idle:
                c = self._idle.pop()
                if c.reusable():
                    reused = True
                    break
                self._discard(c)
            else:
                c = await self._connect()
            try:
                async with asyncio.timeout(timeout):
                    status, data = await self._exchange(c, method, target, body)
            except (EOFError, ConnectionError) as e:
                self._discard(c)
                # A kept-alive connection the server had already closed: nothing was processed, retry once.
                if reused and attempt == 0:
                    continue
                raise _TransportError(type(e).__name__) from e
            except (OSError, TimeoutError, h11.ProtocolError) as e:
                self._discard(c)
                raise _TransportError(type(e).__name__) from e
            except BaseException:  # cancelled mid-request: the connection's state is unknown
                self._discard(c)
                raise
            if c.h11.our_state is h11.DONE and c.h11.their_state is h11.DONE:
                c.h11.start_next_cycle()
                self._idle.append(c)
            else:
                self._discard(c)
            return status, data
        raise _TransportError("unreachable")  # pragma: no cover  (the loop returns or raises)

    # ---- API ----------------------------------------------------------------------------

    async def execute(self, code: str, *, session_id: str | None = None, timeout_s: float | None = None,
                      memory_mb: int | None = None) -> ExecResult:
        req: dict[str, Any] = {"code": code}
        if session_id is not None:
            req["session_id"] = session_id
        if timeout_s is not None:
            req["timeout_s"] = timeout_s
        if memory_mb is not None:
            req["memory_mb"] = memory_mb
        # A session cell may first replay earlier cells, so allow well past the cell's own limit.
        wait = (timeout_s or 10.0) * 4 + self._extra
        try:
            status, data = await self._request("POST", "/v1/execute", json.dumps(req).encode(), wait)
        except _TransportError as e:
            return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                              detail=f"sandbox unreachable: {e}")
        if status == 422:
            return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                              detail=f"sandbox rejected the request: {data[:300].decode(errors='replace')}")
        try:
            return ExecResult.model_validate_json(data)
        except ValueError:
            return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                              detail=f"sandbox answered HTTP {status} without a result")

    async def close_session(self, session_id: str) -> None:
        with contextlib.suppress(_TransportError):
            await self._request("DELETE", f"/v1/sessions/{quote(session_id, safe='')}", None, 30.0)

    async def health(self) -> dict[str, Any]:
        try:
            status, data = await self._request("GET", "/healthz", None, 5.0)
        except _TransportError as e:
            raise SandboxUnreachable(f"no sandbox service at {self.url}: {e}") from e
        if status not in (200, 503):
            raise SandboxUnreachable(f"sandbox at {self.url} answered HTTP {status}")
        try:
            out: dict[str, Any] = json.loads(data)
        except ValueError as e:
            raise SandboxUnreachable(f"sandbox at {self.url} answered without JSON") from e
        return out

    async def aclose(self) -> None:
        self._closed = True
        self._idle.clear()
        for c in list(self._open):
            self._discard(c)

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
