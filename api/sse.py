"""Server-sent events whose producer stops the moment the client goes away.

Starlette's ``StreamingResponse`` only notices a disconnect when a write fails (ASGI spec
>= 2.4), which can be many seconds later while the model thinks or the sandbox runs. This
response listens for ``http.disconnect`` alongside the stream, cancels the producer at once,
and always closes the event iterator, so the solver's ``finally`` blocks (cancel generation,
close the sandbox session) run deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("mathagent.api")


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = asyncio.Event()

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        async def produce() -> None:
            await send({
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            })
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        listener = asyncio.create_task(listen())
        producer = asyncio.create_task(produce())
        try:
            await asyncio.wait({listener, producer}, return_when=asyncio.FIRST_COMPLETED)
            if not producer.done():  # the client went away first
                producer.cancel()
                if self.on_disconnect is not None:
                    self.on_disconnect()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await producer
        finally:
            listener.cancel()
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await producer
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as exc:
                    log.debug("closing the event stream: %s", exc)
