"""Length-prefixed JSON frames between the supervisor and a worker (stream sockets carry code of any size).
The supervisor reads a worker's answer to a cell with ``frames.read_done``, which trusts nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 25


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg).encode()
    return HEADER.pack(len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("channel closed")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> dict[str, Any]:
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    msg = json.loads(_recv_exact(sock, size))
    if not isinstance(msg, dict):
        raise ValueError("frame is not an object")
    return msg


async def arecv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a non-blocking socket; EOFError when the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise EOFError("channel closed")
        buf += chunk
    return bytes(buf)


async def arecv(loop: asyncio.AbstractEventLoop, sock: socket.socket, max_size: int = 1 << 16) -> dict[str, Any]:
    """Read one frame from a non-blocking socket; a peer that sends garbage gets ValueError."""
    (size,) = HEADER.unpack(await arecv_exact(loop, sock, HEADER.size))
    if size > max_size:
        raise ValueError("frame too large")
    try:
        msg = json.loads(await arecv_exact(loop, sock, size))
    except RecursionError:
        raise ValueError("frame nested too deeply") from None
    if not isinstance(msg, dict):
        raise ValueError("frame is not an object")
    return msg
