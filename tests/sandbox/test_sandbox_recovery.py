"""Recovery and limits that need a service of their own: the zygote is restarted after it dies, the
cgroups of a supervisor killed with SIGKILL are swept by the next one, an explicit CPU limit below
the wall limit is enforced from outside."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.sandbox_service import running_sandbox

from sandbox.cgroups import CONTROLLERS, PREFIX, ROOT
from sandbox.client import SandboxClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _groups(instance: str) -> list[Path]:
    return [ROOT / c / f"{PREFIX}{instance}" for c in CONTROLLERS]


async def _wait_health(client: SandboxClient, ok: Callable[[dict], bool], timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        h = await client.health()
        if ok(h):
            return h
        assert time.monotonic() < deadline, f"service did not reach the expected state: {h}"
        await asyncio.sleep(0.05)


async def test_zygote_is_restarted_and_sessions_replay(tmp_path: Path) -> None:
    async with running_sandbox(tmp_path, pool_size=2, max_sessions=2, cpu_s=0.3) as client:
        assert (await client.execute("a = 20", session_id="s")).ok
        before = await client.health()
        os.kill(before["zygote_pid"], signal.SIGKILL)
        h = await _wait_health(client, lambda h: h["zygote_restarts"] == 1 and h["status"] == "ok"
                               and h["ready_workers"] == 2)
        assert h["zygote_pid"] != before["zygote_pid"]
        r = await client.execute("import sympy as sp\nprint(sp.sqrt(8))")
        assert r.status == "ok" and r.stdout == "2*sqrt(2)\n", r
        r = await client.execute("print(a + 1)", session_id="s")  # its worker died with the zygote
        assert r.status == "ok" and r.stdout == "21\n" and r.state_reset, r

        # cpu_s=0.3 below a 5 s wall limit: stopped by the CPU limit, well before the wall limit.
        r = await client.execute("while True:\n    pass", timeout_s=5)
        assert r.status == "cpu_limit" and "CPU limit of 0.3 s" in (r.detail or ""), r
        r = await client.execute("import time\ntime.sleep(60)", timeout_s=1)
        assert r.status == "timeout", r  # sleeping uses no CPU: the wall limit, not the CPU limit


async def test_cgroups_of_a_killed_service_are_swept_at_start(tmp_path: Path, sandbox: SandboxClient) -> None:
    live = (await sandbox.health())["instance"]  # another live instance: must survive the sweep
    async with running_sandbox(tmp_path / "a", pool_size=1, max_sessions=1) as a:
        ha = await a.health()
        if not ha["protections"]["cgroups"]:
            pytest.skip("no cgroups on this host")
        assert all(d.is_dir() for d in _groups(ha["instance"]))
        os.kill(ha["supervisor_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{ha['supervisor_pid']}").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert any(d.is_dir() for d in _groups(ha["instance"])), "nothing was left behind: the test proves nothing"
    async with running_sandbox(tmp_path / "b", pool_size=1, max_sessions=1) as b:
        hb = await b.health()
        assert hb["stale_cgroups_removed"] >= 1
        assert not any(d.exists() for d in _groups(ha["instance"]))
        assert all(d.is_dir() for d in _groups(hb["instance"]))
        assert all(d.is_dir() for d in _groups(live))
        assert (await b.execute("print(1)")).stdout == "1\n"
