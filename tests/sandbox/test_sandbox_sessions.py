"""Stateful sessions: globals persist, a lost worker is reported and rebuilt by replay, idle sessions
expire, the live-session cap holds (an evicted session replays and says so; a new one is refused when every
slot runs a cell), sessions are isolated from each other (also in /proc/net), a session's threads cannot
run between its cells and their CPU is charged to the next cell; plus concurrency."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from support.sandbox_service import running_sandbox

from .conftest import CGROUP_PROBE, Host, process_state, slot_group, slot_pids

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


async def test_a_replayed_cell_that_dies_is_dropped_and_the_rest_replayed(sandbox, host: Host) -> None:
    sid = "replay-dies"
    assert (await sandbox.execute("x = 1", session_id=sid)).ok
    assert (await sandbox.execute("import time\ntime.sleep(1)\ny = 2", session_id=sid, timeout_s=10)).ok
    crash = await sandbox.execute("import os\nos.abort()", session_id=sid)
    assert crash.status == "crashed" and crash.state_reset
    # Replayed under this cell's 0.5 s limit, the sleeping cell dies: it is dropped, x is replayed again.
    r = await sandbox.execute("print(x, 'y' in globals())", session_id=sid, timeout_s=0.5)
    assert r.status == "ok" and r.stdout == "1 False\n" and r.state_reset, r
    assert "its 1 earlier successful cell(s) were replayed" in (r.detail or ""), r.detail
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


async def test_session_cap_evicts_least_recently_used_and_replays_it(sandbox, host: Host) -> None:
    # Before issue 23 the evicted session's next cell ran in an empty namespace with state_reset=false
    # (this test asserted that NameError): now its history is kept, replayed, and the reset reported.
    h = await sandbox.health()
    cap = h["max_sessions"]
    for i in range(cap + 1):
        assert (await sandbox.execute(f"v = {i}", session_id=f"cap-{i}")).ok
    h = await sandbox.health()
    assert h["sessions"] == cap and h["sessions_known"] >= cap + 1
    r = await sandbox.execute("print(v)", session_id="cap-0")  # evicted (least recently used): replayed
    assert r.status == "ok" and r.stdout == "0\n" and r.state_reset, r
    assert "evicted" in (r.detail or "") and "1 earlier successful cell" in (r.detail or ""), r.detail
    r = await sandbox.execute("print(v + 1)", session_id="cap-0")
    assert r.stdout == "1\n" and not r.state_reset, r
    r = await sandbox.execute("print(v)", session_id=f"cap-{cap}")
    assert r.stdout == f"{cap}\n"
    for i in range(cap + 1):
        await sandbox.close_session(f"cap-{i}")
    await host.assert_intact()


async def test_new_session_refused_when_every_slot_runs_a_cell(sandbox, host: Host) -> None:
    cap = (await sandbox.health())["max_sessions"]
    busy = [asyncio.create_task(sandbox.execute("import time\ntime.sleep(4)\nprint('done')", session_id=f"busy-{i}",
                                                timeout_s=20)) for i in range(cap)]
    deadline = time.monotonic() + 15
    while (await sandbox.health())["sessions_running"] < cap:  # every slot taken by a session inside its cell
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    r = await sandbox.execute("print('extra')", session_id="one-too-many")
    assert r.status == "sandbox_error" and "all running a cell" in (r.detail or ""), r
    for r in await asyncio.gather(*busy):
        assert r.status == "ok" and r.stdout == "done\n", r
    r = await sandbox.execute("print('extra')", session_id="one-too-many")  # a slot is idle now
    assert r.ok and not r.state_reset, r
    for i in range(cap):
        await sandbox.close_session(f"busy-{i}")
    await sandbox.close_session("one-too-many")
    await host.assert_intact()


SPINNER = """
import threading
spins = 0
def spin():
    global spins
    while True:
        spins += 1
threading.Thread(target=spin, daemon=True).start()
""" + CGROUP_PROBE


async def test_threads_do_not_run_between_cells(sandbox, host: Host) -> None:
    sid = "spinner"
    r = await sandbox.execute(SPINNER, session_id=sid)
    assert r.ok, r
    cpu = slot_group(r.stdout, "cpuacct") / "cpuacct.usage"
    (pid,) = slot_pids(r.stdout)
    before = int(cpu.read_text())
    await asyncio.sleep(1.5)  # a running spinner would burn most of a core meanwhile
    used_ms = (int(cpu.read_text()) - before) / 1e6
    assert process_state(pid) == "T", "the session worker is not stopped between cells"
    assert used_ms < 50, f"the session's threads used {used_ms:.0f} ms of CPU between cells"
    r1 = await sandbox.execute("print(spins)", session_id=sid)
    await asyncio.sleep(0.5)
    r2 = await sandbox.execute("print(spins)", session_id=sid)
    assert r1.ok and r2.ok, (r1, r2)
    assert int(r2.stdout) >= int(r1.stdout)  # the thread lives on, and runs during cells only
    await sandbox.close_session(sid)
    await host.assert_intact()


async def test_a_sessions_threads_are_charged_to_its_next_cell(sandbox, host: Host) -> None:
    sid = "spinner-charged"
    assert (await sandbox.execute(SPINNER, session_id=sid)).ok
    # The cell itself only sleeps (alone: "timeout"); the session's spinning thread computes meanwhile.
    r = await sandbox.execute("import time\ntime.sleep(30)", session_id=sid, timeout_s=1.5)
    assert r.status == "cpu_limit" and r.cpu_ms > 100 and r.state_reset, r
    await sandbox.close_session(sid)
    await host.assert_intact()


async def test_a_thread_forging_a_frame_in_a_later_cell_is_the_sessions_crash(sandbox, host: Host) -> None:
    sid = "forger"
    r = await sandbox.execute("import os, threading, time\nx = 1\n"
                              "def forge():\n    time.sleep(0.5)\n    os.write(3, b'\\x00\\x00\\x00\\x02{}')\n"
                              "threading.Thread(target=forge, daemon=True).start()", session_id=sid)
    assert r.ok, r
    r = await sandbox.execute("import time\ntime.sleep(3)\nprint('cell 2')", session_id=sid, timeout_s=10)
    assert r.status == "crashed" and "result channel" in (r.detail or "") and r.state_reset, r
    await sandbox.close_session(sid)
    await host.assert_intact()


async def test_sessions_do_not_see_each_others_sockets_in_proc_net(sandbox, host: Host) -> None:
    name = f"mathagent-probe-{uuid.uuid4().hex}"
    r = await sandbox.execute(f"import socket\na, b = socket.socketpair()\na.bind('\\0{name}')\n" + CGROUP_PROBE,
                              session_id="net-a")
    assert r.ok, r
    (pid,) = slot_pids(r.stdout)
    with open(f"/proc/{pid}/net/unix") as f:  # control: the name is there, in that worker's namespace
        assert name in f.read(), "the probe socket is not listed even for its own worker: the test proves nothing"
    probe = f"print('{name}' in open('/proc/net/unix').read())"
    for other in ("net-b", None):
        r = await sandbox.execute(probe, session_id=other)
        assert r.status == "ok" and r.stdout == "False\n", r
    r = await sandbox.execute(probe, session_id="net-a")
    assert r.stdout == "True\n", r
    for sid in ("net-a", "net-b"):
        await sandbox.close_session(sid)
    await host.assert_intact()


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
