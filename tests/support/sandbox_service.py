"""``running_sandbox(tmp_dir)``: the product's private sandbox service (:func:`sandbox.local.local_service`)
in development mode, so it starts on hosts lacking a protection, with every protection the host supports."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from sandbox.client import SandboxClient
from sandbox.local import local_service


@contextlib.asynccontextmanager
async def running_sandbox(tmp_dir: str | os.PathLike[str], **kwargs: object) -> AsyncIterator[SandboxClient]:
    async with local_service(tmp_dir, dev=True, **kwargs) as client:  # type: ignore[arg-type]
        yield client
