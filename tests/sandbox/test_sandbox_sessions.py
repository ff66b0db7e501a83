"""Stateful sessions: globals persist, a lost worker is reported and rebuilt by replay, idle sessions
expire, the live-session cap holds, sessions are isolated from each other; plus concurrency."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.sandbox_service import running_sandbox

from .conftest import Host

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_state_persists_between_cells(sandbox) -> None:
    assert (await sandbox.execute("import sympy as sp\nx = sp.symbols('x')\nn = 41", session_id="persist")).ok
    r = await sandbox.execute("n += 1\nprint(n, sp.solve(x**2 - 4, x))", session_id="persist")
    assert r.status == "ok" and r.stdout == "42 [-2, 2]\n" and r.session_id == "persist" and not r.state_reset
    r = await sandbox.execute("n", session_id="persist")
    assert r.stdout == "42\n"  # a trailing expression is displayed, like a notebook
    await sandbox.close_session("persist")


async def test_crash_resets_state_and_next_cell_replays(sandbox, host: Host) -> None:
    sid = "crashy"
    await sandbox.execute("print('side effect')\nx = 5", session_id=sid)
    await sandbox.execute("1/0", session_id=sid)  # failed cells are not replayed
    await sandbox.execute("y = x * 2", session_id=sid)
    crash = await sandbox.execute("import os\nos.abort()", session_id=sid)
    assert crash.status == "crashed" and crash.state_reset and "replayed" in (crash.detail or "")
    r = await sandbox.execute("print(x, y)", session_id=sid)
    assert r.status == "ok" and r.stdout == "5 10\n", r  # replay output discarded
    assert r.state_reset
    r2 = await sandbox.execute("print(x + y)", session_id=sid)
    assert r2.stdout == "15\n" and not r2.state_reset
    await sandbox.close_session(sid)
    await host.assert_intact()


async def test_timeout_in_session_resets_then_replays(sandbox) -> None:
    sid = "slow"
    await sandbox.execute("z = [1, 2, 3]", session_id=sid)
    r = await sandbox.execute("while True: pass", session_id=sid, timeout_s=0.5)
    assert r.status == "cpu_limit" and r.state_reset
    r = await sandbox.execute("print(sum(z))", session_id=sid)
    assert r.stdout == "6\n" and r.state_reset
    await sandbox.close_session(sid)


async def test_sessions_are_isolated(sandbox) -> None:
    await sandbox.execute("secret = 'a'\nopen('/tmp/mine', 'w').write('A')", session_id="iso-a")
    r = await sandbox.execute(
        "import os\nprint('secret' in globals(), os.path.exists('/tmp/mine'))", session_id="iso-b")
    assert r.stdout == "False False\n", r
    r = await sandbox.execute("print(open('/tmp/mine').read(), secret)", session_id="iso-a")
    assert r.stdout == "A a\n"
    for s in ("iso-a", "iso-b"):
        await sandbox.close_session(s)


async def test_close_session_forgets_state(sandbox) -> None:
    await sandbox.execute("q = 1", session_id="closing")
    await sandbox.close_session("closing")
    r = await sandbox.execute("print(q)", session_id="closing")
    assert r.status == "error" and "NameError" in r.stderr
    await sandbox.close_session("closing")


async def test_session_cap_evicts_least_recently_used(sandbox) -> None:
    h = await sandbox.health()
    cap = h["max_sessions"]
    for i in range(cap + 1):
        assert (await sandbox.execute(f"v = {i}", session_id=f"cap-{i}")).ok
    h = await sandbox.health()
    assert h["sessions"] == cap
    r = await sandbox.execute("print(v)", session_id="cap-0")  # evicted: fresh session
    assert r.status == "error" and "NameError" in r.stderr
    r = await sandbox.execute("print(v)", session_id=f"cap-{cap}")
    assert r.stdout == f"{cap}\n"
    for i in range(cap + 1):
        await sandbox.close_session(f"cap-{i}")


async def test_concurrent_stateless_executions(sandbox, host: Host) -> None:
    code = "import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(x**2 - {k}**2, x))"
    rs = await asyncio.gather(*(sandbox.execute(code.format(k=k)) for k in range(1, 13)))
    for k, r in enumerate(rs, 1):
        assert r.status == "ok" and r.stdout == f"[-{k}, {k}]\n", r
    await host.assert_intact()


async def test_timeout_does_not_disturb_concurrent_work(sandbox, host: Host) -> None:
    slow = asyncio.create_task(sandbox.execute("while True: pass", timeout_s=1.0))
    fast = await asyncio.gather(*(sandbox.execute(f"print({i}*2)") for i in range(6)))
    assert [r.stdout for r in fast] == [f"{i * 2}\n" for i in range(6)]
    assert (await slow).status == "cpu_limit"
    await host.assert_intact()


async def test_concurrent_sessions_keep_their_own_state(sandbox) -> None:
    async def episode(i: int) -> list[str]:
        sid = f"conc-{i}"
        outs = []
        await sandbox.execute(f"acc = {i}", session_id=sid)
        for _ in range(3):
            outs.append((await sandbox.execute("acc += 1\nprint(acc)", session_id=sid)).stdout)
        await sandbox.close_session(sid)
        return outs

    results = await asyncio.gather(*(episode(i) for i in range(3)))
    for i, outs in enumerate(results):
        assert outs == [f"{i + 1}\n", f"{i + 2}\n", f"{i + 3}\n"]


async def test_idle_sessions_expire(tmp_path) -> None:
    async with running_sandbox(tmp_path, pool_size=1, max_sessions=2, session_ttl_s=0.5) as client:
        await client.execute("t = 1", session_id="ttl")
        assert (await client.health())["sessions"] == 1
        deadline = time.monotonic() + 10
        while (await client.health())["sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (await client.health())["sessions"] == 0
        r = await client.execute("print(t)", session_id="ttl")
        assert r.status == "error" and "NameError" in r.stderr
