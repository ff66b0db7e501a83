"""Fixtures for the sandbox suite: one real service per module, and the host invariants every
adversarial test asserts (supervisor alive and unrestarted, no stray process in the sandbox's uid
range, the next execution works)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.sandbox_service import running_sandbox

from sandbox.client import SandboxClient

# the suite runs with --import-mode=importlib: make this folder's helper modules importable
# (sandbox_hostile_cases)
sys.path.insert(0, str(Path(__file__).resolve().parent))


def sandbox_uid_pids(uid_range: list[int]) -> set[int]:
    lo, hi = uid_range
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uids = [int(x) for x in line.split()[1:]]
                        if any(lo <= u < hi for u in uids):
                            found.add(int(entry))
                        break
        except OSError:
            continue
    return found


class Host:
    """Checks that whatever ran left the host as it was."""

    def __init__(self, client: SandboxClient, health: dict[str, Any]) -> None:
        self.client = client
        self.zygote_pid = health["zygote_pid"]
        self.uid_range = health["uid_range"]

    async def assert_intact(self) -> None:
        stray: set[int] = set()
        for _ in range(150):
            h = await self.client.health()
            stray = sandbox_uid_pids(self.uid_range) - set(h["worker_pids"])
            if not stray:
                break
            await asyncio.sleep(0.02)
        assert not stray, f"processes left behind in the sandbox uid range: {stray}"
        assert h["status"] == "ok"
        assert h["zygote_pid"] == self.zygote_pid, "the zygote was restarted or replaced"
        os.kill(self.zygote_pid, 0)  # still alive
        r = await self.client.execute("print(6*7)")
        assert r.status == "ok" and r.stdout == "42\n", r


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxClient]:
    async with running_sandbox(tmp_path_factory.mktemp("sbx"), pool_size=3, max_sessions=4) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def host(sandbox: SandboxClient) -> Host:
    return Host(sandbox, await sandbox.health())


@pytest.fixture(scope="module")
def outside() -> Iterator[Path]:
    """A world-writable host directory visible inside the worker: only Landlock keeps code out."""
    d = Path(tempfile.mkdtemp(prefix="mathagent-sbx-outside-", dir="/var/tmp"))
    d.chmod(0o777)
    secret = d / "secret.txt"
    secret.write_text("TOPSECRET-4711")
    secret.chmod(0o666)
    yield d
    shutil.rmtree(d, ignore_errors=True)
