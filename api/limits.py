"""Request limits: body size and body read time (ASGI middleware), and per-caller rate limiting
backed by Redis.

The body limit is enforced while the body streams in (a lying or missing Content-Length does
not help), so an oversized request is refused with 413 before it is buffered. The whole body
must arrive within ``timeout_s`` of the first read: a client that trickles it (or stops
sending) gets 408 and its connection is closed, so slow bodies cannot hold connections open
(uvicorn has no body read timeout of its own). Hand-written because FastAPI's own
``max_body_size`` answers a declared-too-large body with a plain-text 413 before any handler
runs, outside the one error shape every client parses. The rate limit is a fixed one-minute
window per caller (:mod:`api.callers`) and budget in Redis (``INCR`` + ``EXPIRE`` in one
transaction), so every gateway replica shares it; when Redis is unreachable it fails open
(serving beats refusing everyone) and says so in the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

import redis.asyncio as aioredis
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, ErrorBody, ErrorResponse, error_type, retry_headers

log = logging.getLogger("mathagent.api")


async def send_error(send: Send, status: int, message: str, code: str) -> None:
    """An error response in the one error shape, straight on the ASGI channel; the connection
    is closed after it (the rest of the request is never read)."""
    body = ErrorResponse(error=ErrorBody(message=message, type=error_type(status), code=code)).model_dump()
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in retry_headers(status).items()]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def _refuse(self, send: Send) -> None:
        await send_error(send, 413, f"request body larger than {self.max_bytes} bytes", "body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        started = refused = False
        body_done = False
        deadline: float | None = None

        async def limited_receive() -> Message:
            # Over the limit or past the deadline mid-stream: answer 413/408 now and tell the app
            # the client is gone (an exception here would be turned into a 400 by the framework's
            # body parsing). Once the body is complete, reads are the app's disconnect watch: no deadline.
            nonlocal received, refused, body_done, deadline
            if refused:
                return {"type": "http.disconnect"}
            if body_done or self.timeout_s is None:
                message = await receive()
            else:
                loop = asyncio.get_running_loop()
                deadline = deadline if deadline is not None else loop.time() + self.timeout_s
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    refused = True
                    if not started:
                        await send_error(send, 408, f"the request body did not arrive within {self.timeout_s:g}s",
                                         "body_timeout")
                    return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes and not refused:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not refused:
                raise


def client_key(request: Request) -> str:
    """Who a request counts against: the caller the rate-limit dependency identified
    (:mod:`api.callers`), else the TCP peer's address (digested, never stored in clear)."""
    caller = getattr(request.state, "caller", None)
    if caller is not None:
        return str(caller.key)
    host = request.client.host if request.client else "unknown"
    return "addr:" + hashlib.sha256(f"addr:{host}".encode()).hexdigest()[:24]


class RateLimiter:
    """Fixed one-minute windows per caller and budget (``budget`` names separate counters: the
    solve/chat budget and the feedback budget of one caller do not share a count)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, per_minute: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_minute = per_minute

    async def check(self, key: str, *, budget: str = "requests", per_minute: int | None = None) -> None:
        """Count one request for ``key``; raise a 429 :class:`ApiError` beyond the limit
        (``per_minute``: this budget's limit, default the limiter's own; 0 = unlimited)."""
        limit = self.per_minute if per_minute is None else per_minute
        if limit <= 0:
            return
        now = time.time()
        window = int(now // 60)
        rkey = f"{self.prefix}:ratelimit:{budget}:{key}:{window}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(rkey)
                pipe.expire(rkey, 120)
                count, _ = await pipe.execute()
        except Exception as exc:  # Redis down: fail open
            log.warning("rate limiter unavailable (%s); request admitted", type(exc).__name__)
            return
        if int(count) > limit:
            retry_after = max(1, int(60 - now % 60))
            raise ApiError(
                429,
                f"rate limit exceeded: {limit} {budget} per minute; retry in {retry_after}s",
                code="rate_limit_exceeded",
                headers={"retry-after": str(retry_after)},
            )
