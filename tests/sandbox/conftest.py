"""Fixtures for the sandbox suite: one real service per module, host objects planted to tempt hostile
code (a world-writable SysV segment, world-writable unix sockets in /run and in a host directory), and the
host invariants every adversarial test asserts (supervisor alive and unrestarted, no stray process in the
sandbox's uid range, no SysV object owned by a sandbox uid, the planted segment unchanged, the planted
sockets never reached, the next execution works)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import socket
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
from sandbox_hostile_cases import HOST_SHM_KEY, RUN_DGRAM, RUN_SOCKET

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.shmdt.argtypes = [ctypes.c_void_p]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
IPC_CREAT, IPC_EXCL, IPC_RMID = 0o1000, 0o2000, 0
SHM_MARK = b"host segment, must stay as written"


class HostSegment:
    """A world-writable SysV shared-memory segment on the host, with known content."""

    def __init__(self) -> None:
        stale = _libc.shmget(HOST_SHM_KEY, 0, 0)  # left by a killed run that had this pid
        if stale >= 0:
            _libc.shmctl(stale, IPC_RMID, None)
        self.id = _libc.shmget(HOST_SHM_KEY, 1 << 16, IPC_CREAT | IPC_EXCL | 0o666)
        if self.id < 0:
            raise OSError(ctypes.get_errno(), f"shmget({HOST_SHM_KEY:#x})")
        addr = _libc.shmat(self.id, None, 0)
        ctypes.memmove(addr, SHM_MARK, len(SHM_MARK))
        _libc.shmdt(ctypes.c_void_p(addr))

    def content(self) -> bytes:
        addr = _libc.shmat(self.id, None, 0o10000)  # SHM_RDONLY
        try:
            return ctypes.string_at(addr, len(SHM_MARK))
        finally:
            _libc.shmdt(ctypes.c_void_p(addr))

    def remove(self) -> None:
        _libc.shmctl(self.id, IPC_RMID, None)


def sysv_objects_of(uid_range: list[int]) -> list[str]:
    """SysV objects on the host (its IPC namespace) created or owned by a sandbox uid."""
    lo, hi = uid_range
    found = []
    for kind in ("shm", "msg", "sem"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        head = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(head, line.split(), strict=False))
            if any(lo <= int(row[k]) < hi for k in ("uid", "cuid") if k in row):
                found.append(f"{kind}: {line}")
    return found


class Listener:
    """A world-writable unix socket on the host; ``reached()`` tells whether anything connected or wrote."""

    def __init__(self, path: Path, kind: int = socket.SOCK_STREAM) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, kind)
        self.sock.bind(str(path))
        path.chmod(0o777)
        if kind == socket.SOCK_STREAM:
            self.sock.listen()
        self.sock.setblocking(False)
        self.kind = kind

    def reached(self) -> bool:
        try:
            if self.kind == socket.SOCK_STREAM:
                self.sock.accept()[0].close()
            else:
                self.sock.recv(1 << 16)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def host_objects() -> Iterator[tuple[HostSegment, list[Listener]]]:
    seg = HostSegment()
    listeners = [Listener(RUN_SOCKET), Listener(RUN_DGRAM, socket.SOCK_DGRAM)]
    try:
        yield seg, listeners
    finally:
        for li in listeners:
            li.close()
        seg.remove()


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

    def __init__(self, client: SandboxClient, health: dict[str, Any], segment: HostSegment,
                 listeners: list[Listener]) -> None:
        self.client = client
        self.zygote_pid = health["zygote_pid"]
        self.uid_range = health["uid_range"]
        self.segment = segment
        self.listeners = listeners

    async def assert_intact(self) -> None:
        assert self.segment.content() == SHM_MARK, "the host's SysV segment was written"
        assert not sysv_objects_of(self.uid_range), f"SysV objects left on the host: {sysv_objects_of(self.uid_range)}"
        for li in self.listeners:
            assert not li.reached(), f"a host socket was reached: {li.path}"
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
async def host(sandbox: SandboxClient, host_objects: tuple[HostSegment, list[Listener]],
               outside_socket: Listener) -> Host:
    seg, listeners = host_objects
    return Host(sandbox, await sandbox.health(), seg, [*listeners, outside_socket])


@pytest.fixture(scope="module")
def outside() -> Iterator[Path]:
    """A world-writable host directory (a secret, a symlink, a listening socket): absent from the view."""
    d = Path(tempfile.mkdtemp(prefix="mathagent-sbx-outside-", dir="/var/tmp"))
    d.chmod(0o777)
    secret = d / "secret.txt"
    secret.write_text("TOPSECRET-4711")
    secret.chmod(0o666)
    (d / "link").symlink_to(secret)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def outside_socket(outside: Path) -> Iterator[Listener]:
    li = Listener(outside / "host.sock")
    yield li
    li.sock.close()


# Cells print ``CGROUP_PROBE``'s output; the host then finds the cell's slot groups and worker with these.
CGROUP_PROBE = "print(open('/proc/self/cgroup').read().strip())"


def slot_group(probe_output: str, controller: str) -> Path:
    """The host directory of the slot group a cell ran in, from the cell's /proc/self/cgroup."""
    for line in probe_output.splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    raise AssertionError(f"no {controller} group in {probe_output!r}")


def slot_pids(probe_output: str) -> list[int]:
    """Host pids of the processes in the cell's slot (a session worker stays there between cells)."""
    return [int(x) for x in (slot_group(probe_output, "memory") / "cgroup.procs").read_text().split()]


def process_state(pid: int) -> str:
    """The one-letter state from /proc/<pid>/status (R running, S sleeping, T stopped, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    raise AssertionError(f"no State in /proc/{pid}/status")


def swap_kib() -> int:
    """Swap on this host (with swap the kernel lowers a memory limit by swapping instead of refusing)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("SwapTotal:"):
            return int(line.split()[1])
    return 0
