"""The hostile snippets of the adversarial suite with the statuses each must get, shared by the client
test (test_sandbox_adversarial) and the ``python -m sandbox exec`` test (test_sandbox_cli): one list, so
a case added here is exercised both ways. A plain module (uniquely named: tests/ folders are not packages)."""

from __future__ import annotations

import os
import socket
import struct
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


# Host objects the fixtures plant to tempt the cases: a world-writable SysV segment, world-writable unix
# sockets in /run (listening; Host.assert_intact checks they never got a connection or a datagram).
HOST_SHM_KEY = 0x4D410000 | (os.getpid() & 0xFFF) << 4  # per test process (suites may run side by side)
RUN_SOCKET = Path(f"/run/mathagent-sbx-{os.getpid()}.sock")
RUN_DGRAM = Path(f"/run/mathagent-sbx-{os.getpid()}.dgram")
OUTSIDE_FILES = ["host.sock", "link", "secret.txt"]


def _libc_call(fn: str, *args: int) -> str:
    a = ", ".join(str(x) for x in args)
    return textwrap.dedent(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.{fn}({a}), ctypes.get_errno())
    """)


def _syscall_str(nr: int, text: str, *args: int) -> str:
    a = ", ".join(str(x) for x in args)
    return textwrap.dedent(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        print(libc.syscall({nr}, ctypes.c_char_p({text.encode()!r}), {a}), ctypes.get_errno())
    """)


def _i386(nr: int, *args: int) -> str:
    """A system call through the i386 ABI (int 0x80) from the 64-bit worker, in a few bytes of machine code."""
    regs = [b"\xbb", b"\xb9", b"\xba", b"\xbe", b"\xbf"]  # mov ebx/ecx/edx/esi/edi, imm32
    body = b"\x53\x56\x57" + b"\xb8" + struct.pack("<I", nr)
    for reg, value in zip(regs, args, strict=False):
        body += reg + struct.pack("<I", value & 0xFFFFFFFF)
    body += b"\xcd\x80\x5f\x5e\x5b\xc3"  # int 0x80; pop edi, esi, ebx; ret
    return textwrap.dedent(f"""
        import ctypes, mmap
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write({body!r})
        print(ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))())
    """)


def _frame(body: bytes, size: int | None = None, then: str = "time.sleep(5)") -> str:
    """Code that writes one frame on the worker's command socket (fd 3), then ``then``."""
    header = struct.pack("!I", len(body) if size is None else size)
    return f"import os, time\nos.write(3, {header + body!r})\n{then}"


def _few_pids(seen: int) -> None:
    """The zygote's PID namespace holds the zygote and its workers; the host holds many more."""
    host = sum(1 for e in os.listdir("/proc") if e.isdigit())
    bound = 16
    assert host > bound, f"the host runs only {host} processes: this case proves nothing"
    assert 1 <= seen <= bound, f"{seen} pids visible from the sandbox"


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
    # Outside the workers' view host paths are absent (not merely denied): FileNotFoundError.
    "write_outside_world_writable": Case("open('{outside}/pwned', 'w').write('x')", {ERR}, has("FileNotFoundError"),
                                         absent=["{outside}/pwned"]),
    "read_outside_file": Case("print(open('{outside}/secret.txt').read())", {ERR}, has("FileNotFoundError")),
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
    # ---- SysV IPC and POSIX message queues (objects that outlive a process; the host's must stay unseen;
    #      Host.assert_intact checks the host's SysV tables and the planted segment afterwards) ----------
    "sysv_shm_create": Case(_libc_call("shmget", HOST_SHM_KEY + 1, 1 << 20, 0o1666), {OK}, out_is("-1 1")),
    "sysv_shm_private": Case(_libc_call("shmget", 0, 1 << 20, 0o1600), {OK}, out_is("-1 1")),
    "sysv_shm_attach_host_segment": Case(_libc_call("shmget", HOST_SHM_KEY, 0, 0), {OK}, out_is("-1 1")),
    "sysv_msg_queue": Case(_libc_call("msgget", HOST_SHM_KEY + 2, 0o1666), {OK}, out_is("-1 1")),
    "sysv_semaphore": Case(_libc_call("semget", HOST_SHM_KEY + 3, 1, 0o1666), {OK}, out_is("-1 1")),
    "sysv_raw_syscalls": Case(textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        # shmget shmat shmctl msgget msgsnd msgrcv msgctl semget semop semctl shmdt semtimedop
        out = set()
        for nr in (29, 30, 31, 68, 69, 70, 71, 64, 65, 66, 67, 220):
            out.add((libc.syscall(nr, 0, 0, 0, 0, 0), ctypes.get_errno()))
        print(sorted(out))
    """), {OK}, out_is("[(-1, 1)]")),
    "sysv_host_objects_invisible": Case(
        "print([len(open(f'/proc/sysvipc/{k}').read().splitlines()) for k in ('shm', 'msg', 'sem')])",
        {OK}, out_is("[1, 1, 1]")),  # the header line only, though the host has a segment (fixture)
    "posix_message_queue": Case(_syscall_str(240, "/mathagent-q", 0o102, 0o600, 0), {OK}, out_is("-1 1")),
    "ipc_multiplexer_i386_abi": Case(_i386(117, 23, HOST_SHM_KEY + 4, 1 << 20, 0o1666), {CRASH},
                                     has("SIGSYS", "detail")),  # ipc(SHMGET) through int 0x80
    "shmget_x32_abi": Case(_syscall(0x40000000 | 29, HOST_SHM_KEY + 5, 1 << 20, 0o1666), {CRASH},
                           has("SIGSYS", "detail")),
    # ---- host sockets, host metadata, the project checkout: not in the view ----------------------
    "connect_host_socket_in_run": Case(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{runsock}')\ns.sendall(b'leak')", {ERR},
        has("PermissionError")),
    "sendto_host_datagram_socket": Case(
        "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.sendto(b'leak', '{rundgram}')", {ERR},
        has("PermissionError")),
    "host_socket_paths_absent": Case(
        "import os\nprint([os.path.lexists(p) for p in ('{runsock}', '{rundgram}', '{outside}/host.sock', "
        "'/run', '/var/run', '/dev/log', '/tmp/.X11-unix')])", {OK}, out_is("[False, False, False, False, False, False, "
                                                                            "False]")),
    "socket_families": Case(textwrap.dedent("""
        import socket
        out = {}
        for name in ('AF_INET', 'AF_INET6', 'AF_UNIX', 'AF_NETLINK', 'AF_PACKET', 'AF_VSOCK', 'AF_ALG', 'AF_KEY'):
            fam = getattr(socket, name, None)
            if fam is None:
                continue
            try:
                socket.socket(fam, socket.SOCK_DGRAM if name != 'AF_VSOCK' else socket.SOCK_STREAM).close()
                out[name] = 'created'
            except OSError as e:
                out[name] = e.errno
        a, b = socket.socketpair()
        a.sendall(b'x')
        print(sorted(set(out.values())), b.recv(1))
    """), {OK}, out_is("[1] b'x'")),  # every family refused (EPERM); a socketpair works
    "stat_project_file": Case("import os\nprint(os.stat('{repo}/pyproject.toml'))", {ERR}, has("FileNotFoundError")),
    "readlink_host_symlink": Case("import os\nprint(os.readlink('{outside}/link'))", {ERR}, has("FileNotFoundError")),
    "host_paths_absent": Case(
        "import os, sys\nprint([os.path.lexists(p) for p in ('/home', '/var', '/boot', '/etc/passwd', '/etc/shadow', "
        "'/root/.bashrc', '{repo}/pyproject.toml', '{repo}/sandbox', '{repo}/.git', '{outside}', "
        "os.path.join(sys.prefix, '..', 'pyproject.toml'), '/proc/1/root', '/dev/vda', '/dev/mem', '/dev/kmsg')])",
        {OK}, out_is(str([False] * 15))),
    "walk_up_from_the_interpreter": Case(
        "import os, sys\nprint(os.listdir(os.path.join(sys.prefix, '..')))", {ERR, OK},
        lambda r: "pyproject.toml" not in r.stdout or pytest.fail(r.stdout)),
    "host_name": Case("import os, socket\nprint(socket.gethostname(), os.uname().nodename)", {OK},
                      lambda r: (r.stdout == "sandbox sandbox\n" and socket.gethostname() not in r.stdout)
                      or pytest.fail(r.stdout)),
    "inotify_watch": Case(_libc_call("inotify_init1", 0), {OK}, out_is("-1 1")),
    "proc_self_root": Case("import os\nprint(os.listdir('/proc/self/root/run'))", {ERR}),
    # ---- forged or malformed frames on the worker's command socket (fd 3): the code's own crash ------
    "forged_deeply_nested_frame": Case(_frame(b'{"op":"done","nonce":' + b"[" * 2000 + b"]" * 2000 + b"}"), {CRASH},
                                       has("result channel", "detail")),
    "forged_deeply_nested_small_frame": Case(_frame(b"[" * 1500 + b"]" * 1500), {CRASH}, has("result channel", "detail")),
    "forged_oversized_frame": Case(_frame(b"x", size=0xFFFFFFFF), {CRASH}, has("result channel", "detail")),
    "forged_garbage_frame": Case(_frame(b"\xff\xfe garbage \x00"), {CRASH}, has("result channel", "detail")),
    "forged_non_object_frame": Case(_frame(b"[1, 2, 3]"), {CRASH}, has("result channel", "detail")),
    "forged_wrong_types_frame": Case(_frame(b'{"exc_type":{"a":[1]},"op":"done","nonce":"x","raised":"no"}'), {CRASH},
                                     has("result channel", "detail")),
    "forged_huge_number_frame": Case(_frame(b'{"op":"done","nonce":1e999999,"raised":false}'), {CRASH},
                                     has("result channel", "detail")),
    "forged_done_out_of_order": Case(_frame(b'{"op":"done","nonce":"' + b"0" * 32 + b'","raised":false,"exc_type":null}'),
                                     {CRASH}, has("out of order", "detail")),
    "forged_ready_frame": Case(_frame(b'{"applied":[],"op":"ready"}'), {CRASH}, has("result channel", "detail")),
    "forged_frames_flood": Case(textwrap.dedent("""
        import os, struct
        body = b'{"op":"done"}'
        frame = struct.pack('!I', len(body)) + body
        for _ in range(20000):
            os.write(3, frame)
    """), {CRASH}, has("result channel", "detail")),
    "forged_partial_header": Case("import os, time\nos.write(3, b'\\x00\\x00')\ntime.sleep(60)", {TO}, timeout_s=1.0),
    "forged_frame_then_exit": Case(_frame(b"{}", then="os._exit(0)"), {CRASH}, has("result channel", "detail")),
    "close_command_channel": Case("import os\nos.close(3)", {OK, CRASH, ERR}),
    "shutdown_command_channel": Case("import socket\nsocket.socket(fileno=3).shutdown(socket.SHUT_RDWR)",
                                     {OK, CRASH, ERR}),
    # ---- weaker signals: the zygote's configuration, pids of the host ------------------------------
    "zygote_config_not_in_argv": Case(
        "import sys\nprint(sys.argv, sys.orig_argv, open('/proc/self/cmdline', 'rb').read())", {OK},
        lambda r: not any(w in r.stdout for w in ("uid_base", "protections", "instance", "{", "read_only"))
        or pytest.fail(r.stdout)),
    "pidfd_open_any_pid": Case(textwrap.dedent("""
        import os
        out = []
        for pid in (1, os.getppid(), os.getpid(), {host_pid}):
            try:
                os.close(os.pidfd_open(pid))
                out.append('opened')
            except OSError as e:
                out.append(e.errno)
        print(out)
    """), {OK}, out_is("[1, 1, 1, 1]")),
    "host_pid_probes": Case(textwrap.dedent("""
        import os
        out = set()
        for probe in (lambda p: os.kill(p, 0), os.getpgid, os.getsid, os.sched_getaffinity,
                      lambda p: os.getpriority(os.PRIO_PROCESS, p), lambda p: os.sched_getparam(p)):
            try:
                probe({host_pid})
                out.add('found')
            except ProcessLookupError:
                out.add('ESRCH')
            except OSError as e:
                out.add(e.errno)
        print(sorted(out, key=str))
    """), {OK}, out_is("['ESRCH']")),  # the test process's pid names nothing in the zygote's PID namespace
    "enumerate_pids": Case(textwrap.dedent("""
        import os
        seen = 0
        for pid in range(1, 1 << 16):
            try:
                os.kill(pid, 0)
                seen += 1
            except ProcessLookupError:
                pass
            except PermissionError:
                seen += 1
        print(seen)
    """), {OK}, lambda r: _few_pids(int(r.stdout))),
}


def render(code: str, outside: Path) -> str:
    """Fill in the host paths and pids a case refers to."""
    for key, value in (("{outside}", str(outside)), ("{repo}", str(REPO)), ("{runsock}", str(RUN_SOCKET)),
                       ("{rundgram}", str(RUN_DGRAM)), ("{host_pid}", str(os.getpid()))):
        code = code.replace(key, value)
    return code.replace("{{", "{").replace("}}", "}")


def assert_contained(name: str, case: Case, r: ExecResult, outside: Path) -> None:
    """What every hostile case must show, however it was run: the expected class, the case's own check,
    nothing written on the host, no host path leaked in the traceback."""
    assert r.status in case.statuses, f"{name}: {r.status} {r.detail} {r.stderr[-500:]}"
    assert r.status != "sandbox_error"
    if case.check:
        case.check(r)
    for p in case.absent:
        assert not Path(render(p, outside)).exists(), f"{name} wrote {p}"
    assert sorted(p.name for p in outside.iterdir()) == OUTSIDE_FILES
    assert "site-packages" not in r.stderr and "harness" not in r.stderr, "host paths leaked in traceback"
