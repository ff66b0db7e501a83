"""A sandbox outage, as the gateway sees it: its sandbox client pointed at a socket nobody listens on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sandbox.client import SandboxClient


@contextmanager
def sandbox_down(app: Any) -> Iterator[None]:
    """Readiness checks and admission see a refused connection (a real one) until the block ends."""
    loop = app.task.get_loop()
    dead = SandboxClient(f"unix://{app.state.settings.state_dir}/nobody-listens.sock")
    saved = app.state.sandbox
    app.state.sandbox = dead
    app.state.extra.pop("sandbox_ok_at", None)
    try:
        yield
    finally:
        app.state.sandbox = saved
        asyncio.run_coroutine_threadsafe(dead.aclose(), loop).result(10)
