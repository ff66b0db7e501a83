"""Length-prefixed JSON frames between the supervisor and a worker (stream sockets carry code of any size)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

_HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 25


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg).encode()
    return _HEADER.pack(len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("channel closed")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    return json.loads(_recv_exact(sock, size))


async def arecv(loop: asyncio.AbstractEventLoop, sock: socket.socket, max_size: int = 1 << 16) -> dict[str, Any]:
    """Read one frame from a non-blocking socket; a peer that sends garbage gets ValueError."""

    async def exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, n - len(buf))
            if not chunk:
                raise EOFError("channel closed")
            buf += chunk
        return bytes(buf)

    (size,) = _HEADER.unpack(await exact(_HEADER.size))
    if size > max_size:
        raise ValueError("frame too large")
    msg = json.loads(await exact(size))
    if not isinstance(msg, dict):
        raise ValueError("frame is not an object")
    return msg
