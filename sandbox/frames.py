"""The supervisor's reading of a worker's answer: untrusted input, validated before anything is believed.

Everything on a worker's command socket after "ready" may have been written by the code it runs (fd 3
is reachable from a cell). So the answer to a cell must be exactly one small frame of the expected
shape carrying the nonce sent with that cell; anything else (a frame too large, bytes that are not
JSON, JSON nested past any parser's depth, an object of the wrong shape, a stale frame left from an
earlier cell) raises ``ProtocolViolation``, which the supervisor reports as the code's own failure
(``crashed``), never as the executor's. A cell can still forge its own "done" (it can read the nonce
from the harness's memory): that only lies about itself.

Validated by pydantic on the supervisor side only: the zygote, whose memory every fork copies, never
imports it.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.protocol import HEADER, arecv_exact

MAX_DONE = 4096  # the harness's frame is < 400 bytes: nonce, a bool and a type name cut to 200 chars
EXC_TYPE_MAX = 200


class ProtocolViolation(Exception):
    """The worker wrote something on its command socket that is not the answer expected now."""


class DoneFrame(BaseModel):
    """What the harness sends after a cell (the supervisor classifies the rest from outside)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    op: Literal["done"]
    nonce: str = Field(max_length=64)
    raised: bool
    exc_type: str | None = Field(None, max_length=EXC_TYPE_MAX)


async def read_done(loop: asyncio.AbstractEventLoop, sock: socket.socket, nonce: str) -> DoneFrame:
    """The next frame, which must be the answer to the cell sent with ``nonce``. EOFError when the
    worker closed the channel (it exited or closed fd 3), ProtocolViolation for anything else wrong."""
    (size,) = HEADER.unpack(await arecv_exact(loop, sock, HEADER.size))
    if size > MAX_DONE:
        raise ProtocolViolation(f"a frame of {size} bytes (at most {MAX_DONE})")
    body = await arecv_exact(loop, sock, size)
    try:
        frame = DoneFrame.model_validate_json(body)
    except (ValidationError, ValueError, RecursionError, MemoryError):
        raise ProtocolViolation("a malformed frame") from None
    if not hmac.compare_digest(frame.nonce.encode(), nonce.encode()):
        raise ProtocolViolation("a frame that does not answer this cell (out of order)")
    return frame
