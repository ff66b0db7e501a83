"""Per-slot cgroup v1 groups (memory, pids, cpuacct): the limits the kernel enforces from outside.

Each worker slot gets one group per controller under ``mathagent-sandbox-<instance>``. The supervisor
sets limits, reads CPU time and OOM kills from them, and sweeps ``cgroup.procs`` after every run
(v1 has no ``cgroup.kill``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpuacct")


def available() -> dict[str, bool]:
    out = {}
    for c in CONTROLLERS:
        d = ROOT / c
        out[c] = (d / "cgroup.procs").exists() and os.access(d, os.W_OK)
    return out


class SlotCgroup:
    """The memory, pids and cpuacct groups of one slot."""

    def __init__(self, instance: str, slot: int) -> None:
        self.dirs = {c: ROOT / c / f"mathagent-sandbox-{instance}" / f"slot{slot}" for c in CONTROLLERS}

    def create(self, memory_mb: int, pids_max: int) -> None:
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        mem = self.dirs["memory"]
        self._write(mem / "memory.limit_in_bytes", str(memory_mb << 20))
        with contextlib.suppress(OSError):  # only present with swap accounting
            self._write(mem / "memory.memsw.limit_in_bytes", str(memory_mb << 20))
        self._write(self.dirs["pids"] / "pids.max", str(pids_max))

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    @staticmethod
    def _write(path: Path, value: str) -> None:
        with open(path, "w") as f:
            f.write(value)

    def set_memory(self, memory_mb: int) -> None:
        mem = self.dirs["memory"]
        # memsw must stay >= limit: raise memsw first when growing, lower it last when shrinking.
        with contextlib.suppress(OSError):
            self._write(mem / "memory.memsw.limit_in_bytes", str(memory_mb << 20))
        with contextlib.suppress(OSError):
            self._write(mem / "memory.limit_in_bytes", str(memory_mb << 20))
        with contextlib.suppress(OSError):
            self._write(mem / "memory.memsw.limit_in_bytes", str(memory_mb << 20))

    def cpu_ns(self) -> int:
        try:
            return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        try:
            for line in (self.dirs["memory"] / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def failcnt(self) -> int:
        try:
            return int((self.dirs["memory"] / "memory.failcnt").read_text())
        except (OSError, ValueError):
            return 0

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return out

    def sweep(self) -> int:
        """SIGKILL every process left in the slot; returns how many there were."""
        left = self.pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(left)

    def reset_counters(self) -> None:
        mem = self.dirs["memory"]
        for name in ("memory.failcnt", "memory.max_usage_in_bytes"):
            with contextlib.suppress(OSError):
                self._write(mem / name, "0")

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):
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
