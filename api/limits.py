"""Request limits: body size (ASGI middleware) and per-key rate limiting backed by Redis.

The body limit is enforced while the body streams in (a lying or missing Content-Length does
not help), so an oversized request is refused with 413 before it is buffered. Hand-written
because FastAPI's own ``max_body_size`` answers a declared-too-large body with a plain-text
413 before any handler runs, outside the one error shape every client parses. The rate limit
is a fixed one-minute window per key in Redis (``INCR`` + ``EXPIRE`` in one transaction), so
every gateway replica shares it; when Redis is unreachable it fails open (serving beats
refusing everyone) and says so in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import redis.asyncio as aioredis
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, ErrorBody, ErrorResponse, retry_headers

log = logging.getLogger("mathagent.api")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        status = 413
        body = ErrorResponse(
            error=ErrorBody(
                message=f"request body larger than {self.max_bytes} bytes",
                type="invalid_request_error",
                code="body_too_large",
            )
        ).model_dump()
        raw = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in retry_headers(status).items()]
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

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

        async def limited_receive() -> Message:
            # Over the limit mid-stream: answer 413 now and tell the app the client is gone (an
            # exception here would be turned into a 400 by the framework's body parsing).
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
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
    """Who a request counts against: its API key (hashed, never stored in clear) or its address."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return "key:" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:24]
    host = request.client.host if request.client else "unknown"
    return f"addr:{host}"


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str, per_minute: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_minute = per_minute

    async def check(self, key: str) -> None:
        """Count one request for ``key``; raise a 429 :class:`ApiError` beyond the limit."""
        if self.per_minute <= 0:
            return
        now = time.time()
        window = int(now // 60)
        rkey = f"{self.prefix}:ratelimit:{key}:{window}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(rkey)
                pipe.expire(rkey, 120)
                count, _ = await pipe.execute()
        except Exception as exc:  # Redis down: fail open
            log.warning("rate limiter unavailable (%s); request admitted", type(exc).__name__)
            return
        if int(count) > self.per_minute:
            retry_after = max(1, int(60 - now % 60))
            raise ApiError(
                429,
                f"rate limit exceeded: {self.per_minute} requests per minute; retry in {retry_after}s",
                code="rate_limit_exceeded",
                headers={"retry-after": str(retry_after)},
            )
