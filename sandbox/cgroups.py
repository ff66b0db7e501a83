"""Per-slot cgroup v1 groups (memory, pids, cpuacct): the limits the kernel enforces from outside.

Each worker slot gets one group per controller under ``mathagent-sandbox-<instance>``. The supervisor
sets limits, reads CPU time and OOM kills from them, and sweeps ``cgroup.procs`` after every run
(v1 has no ``cgroup.kill``).

The instance name says who owns the groups: ``<pid namespace inode>-<pid>-<process start time>-<random>``
of the supervisor. A supervisor killed with SIGKILL cannot remove its groups, so every supervisor
sweeps, at start, the groups of instances whose owner is provably gone (``sweep_stale``): same pid
namespace and that pid no longer runs with that start time. Groups of live instances, and of owners
in another pid namespace (which cannot be judged from here), are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpuacct")
PREFIX = "mathagent-sandbox-"
_NEW = re.compile(r"^(\d+)-(\d+)-(\d+)-[0-9a-f]+$")
_LEGACY = re.compile(r"^(\d+)-[0-9a-f]{6}$")  # <pid>-<random> (before start times were recorded)


def _pidns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def new_instance() -> str:
    pid = os.getpid()
    return f"{_pidns()}-{pid}-{_start_time(pid) or 0}-{secrets.token_hex(3)}"


def owner_gone(instance: str) -> bool:
    """True only when the supervisor that named ``instance`` provably no longer runs."""
    m = _NEW.match(instance)
    if m:
        ns, pid, start = (int(g) for g in m.groups())
        return ns == _pidns() and _start_time(pid) != start
    m = _LEGACY.match(instance)
    if m:
        return _start_time(int(m.group(1))) is None
    return False


def _remove_tree(top: Path) -> bool:
    """Kill what is left in ``top``'s slot groups and remove them and ``top``; True when gone."""
    for _ in range(50):
        slots = [d for d in top.iterdir() if d.is_dir()] if top.exists() else []
        for d in slots:
            with contextlib.suppress(OSError, ValueError):
                for pid in (int(x) for x in (d / "cgroup.procs").read_text().split()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(FileNotFoundError):
            try:
                top.rmdir()
                return True
            except OSError:
                time.sleep(0.02)
                continue
        return True
    return False


def sweep_stale(own: str) -> list[str]:
    """Remove the groups of dead previous instances (see module docstring); returns their names."""
    removed: set[str] = set()
    for c in CONTROLLERS:
        base = ROOT / c
        try:
            entries = [e for e in os.listdir(base) if e.startswith(PREFIX)]
        except OSError:
            continue
        for e in entries:
            inst = e[len(PREFIX):]
            if inst != own and owner_gone(inst) and _remove_tree(base / e):
                removed.add(inst)
    return sorted(removed)


def available() -> dict[str, bool]:
    out = {}
    for c in CONTROLLERS:
        d = ROOT / c
        out[c] = (d / "cgroup.procs").exists() and os.access(d, os.W_OK)
    return out


class LimitNotApplied(OSError):
    """The kernel refused a limit (the slot must not run code until it takes one)."""

    def __init__(self, memory_mb: int, usage_mb: float, cause: BaseException) -> None:
        super().__init__(f"memory limit of {memory_mb} MiB not applied ({cause}); the group uses {usage_mb:.0f} MiB")
        self.memory_mb = memory_mb
        self.usage_mb = usage_mb


class SlotCgroup:
    """The memory, pids and cpuacct groups of one slot."""

    def __init__(self, instance: str, slot: int) -> None:
        self.dirs = {c: ROOT / c / f"{PREFIX}{instance}" / f"slot{slot}" for c in CONTROLLERS}
        self._memory_mb: int | None = None
        self._fds: dict[str, int] = {}
        self._procs = [str(d / "cgroup.procs") for d in self.dirs.values()]

    def create(self, memory_mb: int, pids_max: int) -> None:
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        mem = self.dirs["memory"]
        self._write(mem / "memory.limit_in_bytes", str(memory_mb << 20))
        with contextlib.suppress(OSError):  # only present with swap accounting
            self._write(mem / "memory.memsw.limit_in_bytes", str(memory_mb << 20))
        self._memory_mb = memory_mb
        self._write(self.dirs["pids"] / "pids.max", str(pids_max))

    def procs_files(self) -> list[str]:
        return list(self._procs)

    @staticmethod
    def _write(path: Path, value: str) -> None:
        with open(path, "w") as f:
            f.write(value)

    @property
    def memory_mb(self) -> int | None:
        """The limit last applied and verified; None when unknown (a write failed)."""
        return self._memory_mb

    def set_memory(self, memory_mb: int) -> None:
        """Apply the memory limit, or raise ``LimitNotApplied`` leaving the cache empty: the kernel refuses
        to lower it below what the group already uses (EBUSY once reclaim fails), and a call must never
        run under a weaker limit than it asked for."""
        if memory_mb == self._memory_mb:
            return  # only the supervisor writes the limit (workers cannot), so the cached value holds
        self._memory_mb = None
        mem = self.dirs["memory"]
        want = memory_mb << 20
        # memsw (present only with swap accounting) must stay >= limit: raise it first when growing,
        # lower it last when shrinking; the first write may fail for that ordering reason alone.
        memsw = mem / "memory.memsw.limit_in_bytes"
        has_memsw = memsw.exists()
        if has_memsw:
            with contextlib.suppress(OSError):
                self._write(memsw, str(want))
        try:
            self._write(mem / "memory.limit_in_bytes", str(want))
            if has_memsw:
                self._write(memsw, str(want))
            got = int(self._read("memory", "memory.limit_in_bytes"))
        except (OSError, ValueError) as e:
            raise LimitNotApplied(memory_mb, self.memory_usage_mb(), e) from None
        if got != want:  # the kernel rounds to pages; a MiB multiple comes back exactly
            raise LimitNotApplied(memory_mb, self.memory_usage_mb(), ValueError(f"limit reads back as {got}"))
        self._memory_mb = memory_mb

    def memory_usage_mb(self) -> float:
        try:
            return int(self._read("memory", "memory.usage_in_bytes")) / (1 << 20)
        except (OSError, ValueError):
            return float("nan")

    def _read(self, controller: str, name: str) -> str:
        """Read a control file through a descriptor kept open: every execution reads the same files
        (one system call each instead of path lookup, open, read and close)."""
        key = f"{controller}/{name}"
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(self.dirs[controller] / name, os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(fd, 4096, 0).decode()

    def cpu_ns(self) -> int:
        try:
            return int(self._read("cpuacct", "cpuacct.usage"))
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        try:
            for line in self._read("memory", "memory.oom_control").splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def close_fds(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def pids(self) -> set[int]:
        # A fresh open per read: v1 caches a cgroup.procs listing per open file for about a second,
        # so a descriptor kept open would report processes that left, or miss ones that arrived.
        out: set[int] = set()
        for path in self._procs:
            with contextlib.suppress(OSError, ValueError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    out.update(int(x) for x in os.read(fd, 1 << 16).split())
                finally:
                    os.close(fd)
        return out

    def sweep(self) -> int:
        """SIGKILL every process left in the slot; returns how many there were."""
        left = self.pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(left)

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):
                self.close_fds()
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self.sweep()
                    time.sleep(0.02)
            with contextlib.suppress(OSError):
                d.parent.rmdir()
        self.close_fds()
