"""``python -m sandbox exec`` and ``doctor`` as a user runs them: every hostile case, the session classes
(eviction, limits, threads between cells, forged frames, /proc/net) and an ephemeral supervisor reading a
forged frame, each answered with exactly one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sandbox_hostile_cases import CASES, assert_contained, render

from sandbox.result import ExecResult

from .conftest import CGROUP_PROBE, Host, process_state, slot_group, slot_pids, swap_kib

SNIPPETS = {
    "print(1+1)": "ok",
    "1/0": "error",
    "import os\nos.fork()": "error",
    "import time\ntime.sleep(30)": "timeout",
    "import ctypes\nctypes.string_at(0)": "crashed",
    "print('x' * 10**7)": "output_truncated",
    "open('/etc/pwned', 'w')": "error",
}


def _exec(code: str, env: dict[str, str], *args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "sandbox", "exec", "--timeout", "1.5", *args, "-"], input=code,
                       capture_output=True, text=True, env=env, timeout=120)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0 and len(lines) == 1, p.stderr[-2000:]
    return json.loads(lines[0])


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("code", list(SNIPPETS))
async def test_exec_against_running_service(code: str, sandbox) -> None:
    env = {"PATH": os.environ["PATH"], "MATHAGENT_SANDBOX_URL": sandbox.url, "MATHAGENT_DEV": "1"}
    assert _exec(code, env)["status"] == SNIPPETS[code]


def _one_json_line(stdout: str) -> dict:
    """``exec`` prints exactly one line, the JSON result, and nothing else on stdout."""
    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout[-2000:]
    out = json.loads(stdout)
    assert isinstance(out, dict)
    return out


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", list(CASES))
async def test_exec_hostile_case(name: str, sandbox, host: Host, outside: Path) -> None:
    """Every adversarial snippet through ``python -m sandbox exec``, with the limits the case needs."""
    case = CASES[name]
    args = ["--timeout", str(case.timeout_s)] if case.timeout_s else []
    if case.memory_mb:
        args += ["--memory-mb", str(case.memory_mb)]
    env = {"PATH": os.environ["PATH"], "MATHAGENT_SANDBOX_URL": sandbox.url, "MATHAGENT_DEV": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox", "exec", *args, "-", env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(render(case.code, outside).encode()), 120)
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    r = ExecResult.model_validate(_one_json_line(stdout.decode()))
    assert_contained(name, case, r, outside)
    await host.assert_intact()


def test_exec_starts_an_ephemeral_supervisor(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "MATHAGENT_SANDBOX_URL": f"unix://{tmp_path}/none.sock", "MATHAGENT_DEV": "1"}
    out = _exec("import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(x**2 - 4, x))", env)
    assert out["status"] == "ok" and out["stdout"] == "[-2, 2]\n"


def test_doctor_lists_protections() -> None:
    p = subprocess.run([sys.executable, "-m", "sandbox", "doctor"], capture_output=True, text=True, timeout=60)
    report = json.loads(p.stdout)
    assert set(report["host"]) >= {"uid", "mount_ns", "net_ns", "landlock", "seccomp", "cgroup_memory"}
    assert p.returncode == (1 if report["missing"] else 0)


def _doctor_quiet(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", "doctor", "--quiet"], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.asyncio(loop_scope="module")
async def test_doctor_quiet_is_the_healthcheck(sandbox, tmp_path: Path) -> None:
    host_missing = json.loads(subprocess.run([sys.executable, "-m", "sandbox", "doctor"], capture_output=True,
                                             text=True, timeout=60).stdout)["missing"]
    env = {"PATH": os.environ["PATH"], "MATHAGENT_SANDBOX_URL": sandbox.url}
    p = _doctor_quiet(env)
    if host_missing:
        assert p.returncode == 1 and "host lacks" in p.stderr
    else:
        assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    # No service at the configured URL: unhealthy, whatever the host supports.
    p = _doctor_quiet({**env, "MATHAGENT_SANDBOX_URL": f"unix://{tmp_path}/none.sock"})
    assert p.returncode == 1 and p.stdout == "" and "no sandbox service" in p.stderr


async def _aexec(code: str, env: dict[str, str], *args: str) -> ExecResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox", "exec", *args, "-", env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(code.encode()), 120)
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return ExecResult.model_validate(_one_json_line(stdout.decode()))


def _env(sandbox) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "MATHAGENT_SANDBOX_URL": sandbox.url, "MATHAGENT_DEV": "1"}


@pytest.mark.asyncio(loop_scope="module")
async def test_exec_evicted_session_replays(sandbox, host: Host) -> None:
    env = _env(sandbox)
    cap = (await sandbox.health())["max_sessions"]
    for i in range(cap + 1):
        r = await _aexec(f"w = {i}", env, "--session", f"cli-cap-{i}")
        assert r.ok, r
    r = await _aexec("print(w)", env, "--session", "cli-cap-0")
    assert r.status == "ok" and r.stdout == "0\n" and r.state_reset and "evicted" in (r.detail or ""), r
    for i in range(cap + 1):
        await sandbox.close_session(f"cli-cap-{i}")
    await host.assert_intact()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.skipif(swap_kib() > 0, reason="with swap the kernel lowers the limit by swapping instead of refusing")
async def test_exec_session_limit_below_its_holdings_is_refused(sandbox, host: Host) -> None:
    env = _env(sandbox)
    r = await _aexec("x = b'x' * (150 << 20)\n" + CGROUP_PROBE, env, "--session", "cli-holder", "--memory-mb", "512")
    assert r.ok, r
    limit = slot_group(r.stdout, "memory") / "memory.limit_in_bytes"
    r = await _aexec("print('ran')", env, "--session", "cli-holder", "--memory-mb", "64")
    assert r.status == "memory_limit" and r.stdout == "" and "not run" in (r.detail or ""), r
    assert int(limit.read_text()) == 512 << 20
    await sandbox.close_session("cli-holder")
    await host.assert_intact()


@pytest.mark.asyncio(loop_scope="module")
async def test_exec_session_threads_stop_between_cells(sandbox, host: Host) -> None:
    env = _env(sandbox)
    code = "import threading\ndef spin():\n    while True: pass\nthreading.Thread(target=spin, daemon=True).start()\n"
    r = await _aexec(code + CGROUP_PROBE, env, "--session", "cli-spinner")
    assert r.ok, r
    (pid,) = slot_pids(r.stdout)
    cpu = slot_group(r.stdout, "cpuacct") / "cpuacct.usage"
    before = int(cpu.read_text())
    await asyncio.sleep(1.0)
    assert process_state(pid) == "T"
    assert (int(cpu.read_text()) - before) / 1e6 < 50
    await sandbox.close_session("cli-spinner")
    await host.assert_intact()


@pytest.mark.asyncio(loop_scope="module")
async def test_exec_session_forged_frame_from_a_thread(sandbox, host: Host) -> None:
    env = _env(sandbox)
    r = await _aexec("import os, threading, time\ndef forge():\n    time.sleep(0.5)\n    os.write(3, b'\\xff' * 64)\n"
                     "threading.Thread(target=forge, daemon=True).start()", env, "--session", "cli-forger")
    assert r.ok, r
    r = await _aexec("import time\ntime.sleep(3)", env, "--session", "cli-forger", "--timeout", "10")
    assert r.status == "crashed" and "result channel" in (r.detail or "") and r.state_reset, r
    await sandbox.close_session("cli-forger")
    await host.assert_intact()


@pytest.mark.asyncio(loop_scope="module")
async def test_exec_sessions_do_not_share_proc_net(sandbox, host: Host) -> None:
    env = _env(sandbox)
    name = f"mathagent-cli-probe-{uuid.uuid4().hex}"
    r = await _aexec(f"import socket\na, b = socket.socketpair()\na.bind('\\0{name}')\n" + CGROUP_PROBE, env,
                     "--session", "cli-net-a")
    assert r.ok, r
    (pid,) = slot_pids(r.stdout)
    assert name in Path(f"/proc/{pid}/net/unix").read_text()  # control: visible in its own namespace
    r = await _aexec(f"print('{name}' in open('/proc/net/unix').read())", env, "--session", "cli-net-b")
    assert r.stdout == "False\n", r
    for sid in ("cli-net-a", "cli-net-b"):
        await sandbox.close_session(sid)
    await host.assert_intact()


def test_exec_ephemeral_supervisor_reads_a_forged_frame(tmp_path: Path) -> None:
    """No service: ``exec`` runs its own supervisor, which must classify a forged frame as the code's crash."""
    env = {"PATH": os.environ["PATH"], "MATHAGENT_SANDBOX_URL": f"unix://{tmp_path}/none.sock", "MATHAGENT_DEV": "1"}
    body = b'{"op":"done","nonce":' + b"[" * 3000 + b"]" * 3000 + b"}"
    code = f"import os, struct, time\nb = {body!r}\nos.write(3, struct.pack('!I', len(b)) + b)\ntime.sleep(5)"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "sandbox", "exec", "--timeout", "10", "-"], input=code,
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = _one_json_line(p.stdout)
    assert out["status"] == "crashed" and "result channel" in out["detail"], out
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert time.monotonic() - t0 < 60


def test_cli_commands_and_flags() -> None:
    """The typer CLI keeps argparse's commands and flags: --socket and --port exclude each other (usage
    error, status 2); an unreadable code file is still answered with one JSON line."""
    p = subprocess.run([sys.executable, "-m", "sandbox", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and all(c in p.stdout for c in ("serve", "exec", "doctor"))
    for cmd, flags in (("serve", ("--socket", "--port")), ("exec", ("--session", "--timeout", "--memory-mb")),
                       ("doctor", ("--quiet", "--url"))):
        p = subprocess.run([sys.executable, "-m", "sandbox", cmd, "--help"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "COLUMNS": "200"})
        assert p.returncode == 0 and all(f in p.stdout for f in flags), p.stdout
    p = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--socket", "/nonexistent/s.sock", "--port", "1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "mutually exclusive" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "sandbox", "exec", "/nonexistent/code.py"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and _one_json_line(p.stdout)["status"] == "sandbox_error", p.stdout
