"""The hostile snippets of the adversarial suite with the statuses each must get, shared by the client
test (test_sandbox_adversarial) and the ``python -m sandbox exec`` test (test_sandbox_cli): one list, so
a case added here is exercised both ways. A plain module (uniquely named: tests/ folders are not packages)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox.result import ExecResult

REPO = Path(__file__).resolve().parents[2]

OK, ERR, TO, CPU, MEM, TRUNC, CRASH = "ok", "error", "timeout", "cpu_limit", "memory_limit", "output_truncated", "crashed"
SLOW = {TO, CPU}  # only where the class genuinely depends on the host (memory vs. time, ...)


@dataclass
class Case:
    code: str
    statuses: set[str]
    check: Callable[[ExecResult], object] | None = None
    timeout_s: float | None = 3.0
    memory_mb: int | None = None
    absent: list[str] = field(default_factory=list)  # host paths that must not exist afterwards


def has(text: str, stream: str = "stderr") -> Callable[[ExecResult], None]:
    def check(r: ExecResult) -> None:
        assert text in getattr(r, stream), getattr(r, stream)

    return check


def has_any(texts: list[str], stream: str = "stderr") -> Callable[[ExecResult], None]:
    def check(r: ExecResult) -> None:
        got = getattr(r, stream) or ""
        assert any(t in got for t in texts), got

    return check


def out_is(text: str) -> Callable[[ExecResult], None]:
    def check(r: ExecResult) -> None:
        assert r.stdout.strip() == text, r

    return check


def _syscall(nr: int, *args: int) -> str:
    a = ", ".join(str(x) for x in args)
    return textwrap.dedent(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        print(libc.syscall({nr}{", " if a else ""}{a}), ctypes.get_errno())
    """)


CASES: dict[str, Case] = {
    # ---- processes -----------------------------------------------------------------------
    "fork_bomb": Case("import os\nwhile True:\n    os.fork()", {ERR}, has("PermissionError")),
    "process_burst_threads_in_subprocess": Case(
        "import subprocess\nfor _ in range(50):\n    subprocess.Popen(['sleep', '100'])", {ERR}, has("PermissionError")),
    "multiprocessing_pool": Case(
        "import multiprocessing as mp\nwith mp.Pool(4) as p:\n    print(p.map(abs, range(8)))", {ERR}),
    "spawn_shell_subprocess": Case("import subprocess\nprint(subprocess.run(['sh', '-c', 'id'], capture_output=True))",
                                   {ERR}, has("PermissionError")),
    "spawn_shell_os_system": Case("import os\nprint(os.system('touch /var/tmp/mathagent-pwned'))", {OK},
                                  lambda r: (r.stdout.strip() != "0") or pytest.fail(r.stdout),
                                  absent=["/var/tmp/mathagent-pwned"]),
    "execv_shell": Case("import os\nos.execv('/bin/sh', ['sh', '-c', 'id'])", {ERR}, has("PermissionError")),
    "posix_spawn": Case("import os\nos.posix_spawn('/bin/true', ['true'], {})", {ERR}),
    "double_fork_daemon": Case(
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        import time; time.sleep(1000)",
        {ERR}, has("PermissionError")),
    "thread_storm": Case(
        "import threading, time\nts = [threading.Thread(target=time.sleep, args=(30,), daemon=True) for _ in range(2000)]\n"
        "for t in ts:\n    t.start()", {ERR}, has("can't start new thread")),
    "busy_threads": Case(
        "import threading\ndef spin():\n    while True: pass\nfor _ in range(6):\n    threading.Thread(target=spin).start()\nspin()",
        {CPU}, timeout_s=1.5),
    # ---- memory ---------------------------------------------------------------------------
    "memory_bomb_one_allocation": Case("x = bytearray(64 * 2**30)", {MEM}, memory_mb=256),
    "memory_creeping_growth": Case("l = []\nwhile True:\n    l.append(bytearray(2**20))", {MEM}, memory_mb=200,
                                   timeout_s=10),
    "memory_numpy_touch": Case("import numpy as np\na = np.ones((1 << 27,))\nprint(a.sum())", {MEM}, memory_mb=256,
                               timeout_s=10),
    "huge_integer": Case("x = 10 ** (10 ** 10)\nprint(x % 7)", SLOW | {MEM}, timeout_s=2),
    # ---- time ---------------------------------------------------------------------------
    # Computing at the deadline is cpu_limit, sleeping or stopped is timeout, however busy the host is.
    # With the CPU limit equal to the wall limit, a loop that gets a whole core reaches either first: the
    # cgroup CPU watchdog ("CPU limit of 1 s exceeded") or the deadline ("still computing when ...").
    "infinite_loop": Case("while True:\n    pass", {CPU}, has_any(["still computing", "CPU limit of"], "detail"),
                          timeout_s=1.0),
    "c_level_loop": Case("import itertools\nsum(itertools.repeat(1))", {CPU}, timeout_s=1.0),
    "catastrophic_regex": Case("import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", {CPU}, timeout_s=1.0),
    "sleep_past_timeout": Case("import time\ntime.sleep(60)", {TO}, lambda r: r.wall_ms < 3000 or pytest.fail(str(r)),
                               timeout_s=1.0),
    "blocked_on_a_lock": Case("import threading\nl = threading.Lock()\nl.acquire()\nl.acquire()", {TO}, timeout_s=1.0),
    "compute_then_sleep": Case("import time\nt = time.time()\nwhile time.time() - t < 0.2: pass\ntime.sleep(60)", {TO},
                               timeout_s=1.5),
    "signal_handlers_ignore_xcpu_term": Case(
        "import signal\nfor s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass", {CPU}, timeout_s=1.0),
    "sigstop_self": Case("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", {TO}, timeout_s=1.0),
    "input_from_stdin": Case("print(input())", {ERR}, has("EOFError")),
    # ---- output ---------------------------------------------------------------------------
    "huge_output_many_lines": Case("for i in range(10**8):\n    print(i)", {TRUNC},
                                   lambda r: (r.stdout_truncated and len(r.stdout.encode()) <= 65536) or pytest.fail(str(r.detail))),
    "huge_output_one_line": Case("print('x' * 10**8)", {TRUNC},
                                 lambda r: (r.stdout_truncated and r.stdout == 'x' * 65536) or pytest.fail(str(r.detail))),
    "huge_stderr": Case("import sys\nsys.stderr.write('e' * 10**6)", {TRUNC},
                        lambda r: r.stderr_truncated or pytest.fail("stderr not flagged")),
    "binary_garbage_output": Case("import sys\nsys.stdout.buffer.write(bytes(range(256)) * 64)\nsys.stdout.flush()", {OK},
                                  lambda r: (r.stdout.encode("utf-8") and "\\xff" in r.stdout) or pytest.fail(str(r))),
    "close_stdout_stderr": Case("import os\nos.close(1)\nos.close(2)\nprint('gone')", {OK, ERR},
                                lambda r: r.wall_ms < 2500 or pytest.fail(str(r))),
    # ---- crashes ----------------------------------------------------------------------------
    "recursion": Case("def f(n):\n    return f(n + 1)\nf(0)", {ERR}, has("RecursionError")),
    "recursion_limit_raised": Case("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)",
                                   {CRASH, ERR, MEM} | SLOW, memory_mb=256),
    "segfault_ctypes": Case("import ctypes\nctypes.string_at(0)", {CRASH}, has("SIGSEGV", "detail")),
    "abort": Case("import os\nos.abort()", {CRASH}, has("SIGABRT", "detail")),
    # ---- limits -----------------------------------------------------------------------------
    "raise_rlimit_cpu": Case("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (-1, -1))", {ERR}),
    "raise_rlimit_nofile": Case("import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))", {ERR}),
    "write_own_cgroup_limit": Case(
        "cg = [l for l in open('/proc/self/cgroup').read().splitlines() if ':memory:' in l][0].split(':')[2]\n"
        "open(f'/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes', 'w').write('-1')", {ERR}),
    "fd_exhaustion": Case("fs = []\nwhile True:\n    fs.append(open('/dev/null'))", {ERR}, has("Too many open files")),
    "big_file": Case("with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'0' * 2**20)", {ERR}),
    "many_files": Case("import os\nfor i in range(100000):\n    open(f'f{i}', 'w').close()", {ERR}),
    "dev_shm_fill": Case("with open('/dev/shm/fill', 'wb') as f:\n    f.write(b'0' * 64 * 2**20)", {ERR}),
    # ---- files ------------------------------------------------------------------------------
    "write_system_path": Case("open('/etc/mathagent-pwned', 'w').write('x')", {ERR}, absent=["/etc/mathagent-pwned"]),
    "write_outside_world_writable": Case("open('{outside}/pwned', 'w').write('x')", {ERR}, has("PermissionError"),
                                         absent=["{outside}/pwned"]),
    "read_outside_file": Case("print(open('{outside}/secret.txt').read())", {ERR}, has("PermissionError")),
    "read_project_checkout": Case("print(open('{repo}/pyproject.toml').read()[:50])", {ERR}),
    "list_project_checkout": Case("import os\nprint(os.listdir('{repo}'))", {ERR}),
    "delete_project_file": Case("import os\nos.remove('{repo}/pyproject.toml')", {ERR},
                                lambda r: (REPO / "pyproject.toml").exists() or pytest.fail("deleted!")),
    "read_root_home": Case("import os\nprint(sorted(os.listdir('/root')))\nprint(open('/root/.bashrc').read())", {ERR}),
    "symlink_escape": Case("import os\nos.symlink('/etc/shadow', 'x')\nprint(open('x').read())", {ERR}),
    # ---- secrets and other processes ---------------------------------------------------------
    "list_host_processes": Case("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [os.getpid()])",
                                {OK}, out_is("True")),
    "read_init_environ": Case("print(open('/proc/1/environ', 'rb').read())", {ERR}),
    "read_parent_environ_and_mem": Case(
        "import os\nppid = os.getppid()\nprint(open(f'/proc/{{ppid}}/environ', 'rb').read())", {ERR}),
    "kill_parent": Case("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", {ERR}, has("PermissionError")),
    "ptrace_parent": Case(textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())
    """), {OK}, out_is("-1 1")),
    "setuid_root": Case("import os\nos.setuid(0)", {ERR}),
    # ---- network -----------------------------------------------------------------------------
    "dns_lookup": Case("import socket\nprint(socket.getaddrinfo('pypi.org', 443))", {ERR}),
    # ---- kernel attack surface (seccomp) -----------------------------------------------------
    "syscall_unshare_userns": Case(_syscall(272, 0x10000000), {OK}, out_is("-1 1")),
    "syscall_unshare_netns": Case(_syscall(272, 0x40000000), {OK}, out_is("-1 1")),
    "syscall_setns": Case(_syscall(308, 0, 0), {OK}, out_is("-1 1")),
    "syscall_mount": Case(_syscall(165, 0, 0, 0, 0, 0), {OK}, out_is("-1 1")),
    "syscall_bpf": Case(_syscall(321, 0, 0, 0), {OK}, out_is("-1 1")),
    "syscall_io_uring_setup": Case(_syscall(425, 8, 0), {OK}, out_is("-1 1")),
    "syscall_keyctl": Case(_syscall(250, 0, 0, 0), {OK}, out_is("-1 1")),
    "syscall_userfaultfd": Case(_syscall(323, 0), {OK}, out_is("-1 1")),
    "syscall_perf_event_open": Case(_syscall(298, 0, 0, -1, -1, 0), {OK}, out_is("-1 1")),
    "syscall_clone_process": Case(_syscall(56, 17, 0, 0, 0, 0), {OK}, out_is("-1 1")),
    "ioctl_tiocsti": Case("import fcntl, sys\nfcntl.ioctl(0, 0x5412, b'x')", {ERR}),
}


def render(code: str, outside: Path) -> str:
    """Fill in the host paths a case refers to."""
    return code.replace("{outside}", str(outside)).replace("{repo}", str(REPO)).replace("{{", "{").replace("}}", "}")


def assert_contained(name: str, case: Case, r: ExecResult, outside: Path) -> None:
    """What every hostile case must show, however it was run: the expected class, the case's own check,
    nothing written on the host, no host path leaked in the traceback."""
    assert r.status in case.statuses, f"{name}: {r.status} {r.detail} {r.stderr[-500:]}"
    assert r.status != "sandbox_error"
    if case.check:
        case.check(r)
    for p in case.absent:
        assert not Path(render(p, outside)).exists(), f"{name} wrote {p}"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert "site-packages" not in r.stderr and "harness" not in r.stderr, "host paths leaked in traceback"
