"""Memory limits hold as asked, read back from the host's cgroup files: code that tries to leave memory
charged to its slot does not weaken the next caller's limit, a limit the kernel refuses is never run
under (a session holding more than it asks for is refused; a pool slot holding leaked memory is recycled
and the call moves on), and a refused limit is never remembered as applied. Through the service and
through ``python -m sandbox exec`` (the session case's exec twin is in test_sandbox_cli)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.sandbox_service import running_sandbox

from sandbox import cgroups
from sandbox.client import SandboxClient
from sandbox.result import ExecResult

from .conftest import CGROUP_PROBE, Host, slot_group, swap_kib

pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1 << 20

LEAVE_MEMORY_BEHIND = textwrap.dedent("""
    import ctypes, mmap, os
    libc = ctypes.CDLL(None, use_errno=True)
    with open('/tmp/fill', 'wb') as f:
        f.write(b'x' * (48 << 20))
    with open('/dev/shm/fill', 'wb') as f:
        f.write(b'x' * (12 << 20))
    fd = os.memfd_create('keep')
    os.write(fd, b'x' * (32 << 20))
    print(libc.shmget(0, 64 << 20, 0o1600), ctypes.get_errno())
""") + CGROUP_PROBE


def _limit_mb(probe_output: str) -> int:
    return int((slot_group(probe_output, "memory") / "memory.limit_in_bytes").read_text()) // MiB


async def test_memory_left_behind_does_not_weaken_the_next_limit(sandbox: SandboxClient, host: Host) -> None:
    pool = (await sandbox.health())["pool_size"]
    for _ in range(pool + 1):  # the pool's slots take calls in turn: every slot gets one
        r = await sandbox.execute(LEAVE_MEMORY_BEHIND, timeout_s=10)
        assert r.status == "ok" and r.stdout.startswith("-1 1\n"), r
    for asked in range(70, 70 + pool + 1):  # a distinct limit per call, each read back from the host
        r = await sandbox.execute(CGROUP_PROBE, memory_mb=asked)
        assert r.status == "ok", r
        assert _limit_mb(r.stdout) == asked
    await host.assert_intact()


@pytest.mark.skipif(swap_kib() > 0, reason="with swap the kernel lowers the limit by swapping instead of refusing")
async def test_a_session_holding_more_than_its_limit_is_refused_not_run(sandbox: SandboxClient, host: Host) -> None:
    sid = "holder"
    r = await sandbox.execute("x = b'x' * (150 << 20)\n" + CGROUP_PROBE, session_id=sid, memory_mb=512)
    assert r.ok, r
    probe = r.stdout
    assert _limit_mb(probe) == 512
    r = await sandbox.execute("print('ran')", session_id=sid, memory_mb=64)
    assert r.status == "memory_limit" and r.stdout == "" and "not run" in (r.detail or ""), r
    assert not r.state_reset
    assert _limit_mb(probe) == 512  # untouched, and nothing ran under it for the 64 MiB call
    r = await sandbox.execute("print(len(x) >> 20)", session_id=sid, memory_mb=256)
    assert r.status == "ok" and r.stdout == "150\n" and not r.state_reset, r
    assert _limit_mb(probe) == 256
    await sandbox.close_session(sid)
    await host.assert_intact()


@pytest.mark.skipif(not all(cgroups.available().values()), reason="needs cgroup v1 controllers as root")
@pytest.mark.skipif(swap_kib() > 0, reason="with swap the kernel lowers the limit by swapping instead of refusing")
async def test_a_pool_slot_refusing_a_limit_is_recycled_and_the_call_moves_on(tmp_path: Path) -> None:
    async with running_sandbox(tmp_path, pool_size=2, max_sessions=1) as client:
        h = await client.health()
        slot0 = cgroups.ROOT / "memory" / f"{cgroups.PREFIX}{h['instance']}" / "slot0"
        # Memory charged to slot 0 that no worker of it holds (as a leaked segment was): a host process
        # inside the slot's memory group, holding 200 MiB. The sandbox cannot lower the limit below it.
        # (It joins before allocating: cgroup v1 leaves earlier charges where they were.)
        hog = subprocess.Popen([sys.executable, "-c", "import time\nx = b'x' * (200 << 20)\nprint(1, flush=True)\n"
                                "time.sleep(600)"], stdout=subprocess.PIPE,
                               preexec_fn=lambda: (slot0 / "cgroup.procs").write_text("0"))
        try:
            assert hog.stdout is not None and hog.stdout.readline() == b"1\n"
            assert int((slot0 / "memory.usage_in_bytes").read_text()) > 150 * MiB  # the test can fail
            deadline = time.monotonic() + 60
            calls = 0
            while hog.poll() is None:  # until the call that lands in slot 0 has had it recycled
                assert time.monotonic() < deadline, "slot 0 was never recycled"
                # through the service and through `python -m sandbox exec`, in turn
                r = await (client.execute(CGROUP_PROBE, memory_mb=64) if calls % 2 == 0
                           else _cli(client.url, CGROUP_PROBE, "--memory-mb", "64"))
                calls += 1
                assert r.status == "ok", r
                assert _limit_mb(r.stdout) == 64  # on whichever slot ran it: as asked, never weaker
            # The recycled slot is back in the pool with a limit it could take.
            for _ in range(4):
                r = await client.execute(CGROUP_PROBE, memory_mb=64)
                assert r.status == "ok" and _limit_mb(r.stdout) == 64, r
            await _wait(lambda: int((slot0 / "memory.limit_in_bytes").read_text()) in (64 * MiB, 1024 * MiB))
        finally:
            hog.kill()
            hog.wait()


async def _cli(url: str, code: str, *args: str) -> ExecResult:
    env = {"PATH": os.environ["PATH"], "MATHAGENT_SANDBOX_URL": url, "MATHAGENT_DEV": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sandbox", "exec", *args, "-", env=env,
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(code.encode()), 120)
    assert proc.returncode == 0 and out.count(b"\n") == 1, out
    return ExecResult.model_validate_json(out)


async def test_exec_limits_as_asked(sandbox: SandboxClient, host: Host) -> None:
    for asked in (66, 67):
        r = await _cli(sandbox.url, LEAVE_MEMORY_BEHIND, "--timeout", "10")
        assert r.status == "ok" and r.stdout.startswith("-1 1\n"), r
        r = await _cli(sandbox.url, CGROUP_PROBE, "--memory-mb", str(asked))
        assert r.status == "ok" and _limit_mb(r.stdout) == asked, r
    await host.assert_intact()


async def _wait(ok: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
