"""``python -m sandbox exec`` and ``doctor`` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_hostile_cases import CASES, assert_contained, render

from sandbox.result import ExecResult

from .conftest import Host

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
