"""What this host can enforce: probed once at start, printed by ``python -m sandbox doctor``.

Strict mode refuses to start unless every protection in ``REQUIRED`` is available; dev mode runs with
whatever exists and says which are missing.
"""

from __future__ import annotations

import os
import site
import sys

from pydantic import BaseModel

from sandbox import cgroups, linux

REQUIRED = ("uid", "mount_ns", "pid_ns", "ipc_ns", "net_ns", "landlock", "seccomp", "cgroup_memory", "cgroup_pids",
            "cgroup_cpuacct")


class HostProtections(BaseModel):
    root: bool
    uid: bool
    mount_ns: bool  # and with it the workers' minimal filesystem view (pivot_root)
    pid_ns: bool
    ipc_ns: bool
    net_ns: bool
    landlock: int  # ABI version, 0 when missing
    seccomp: bool
    cgroup_memory: bool
    cgroup_pids: bool
    cgroup_cpuacct: bool
    notes: list[str] = []

    def missing(self) -> list[str]:
        out = [name for name in REQUIRED if not getattr(self, name)]
        if 0 < self.landlock < 6:
            out.append("landlock>=6 (signal and abstract-socket scoping)")
        return out


def _can_unshare(flag: int) -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            linux.unshare(flag)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def probe() -> HostProtections:
    notes: list[str] = []
    root = os.geteuid() == 0
    try:
        import pyseccomp  # noqa: F401

        seccomp = True
    except (ImportError, RuntimeError, OSError) as e:
        seccomp = False
        notes.append(f"seccomp unavailable: {e}")
    cg = cgroups.available() if root else dict.fromkeys(cgroups.CONTROLLERS, False)
    if not root:
        notes.append("not root: no per-slot uid, namespaces or cgroups")
    abi = linux.landlock_abi()
    return HostProtections(
        root=root,
        uid=root,
        mount_ns=root and _can_unshare(linux.CLONE_NEWNS),
        pid_ns=root and _can_unshare(linux.CLONE_NEWPID),
        ipc_ns=root and _can_unshare(linux.CLONE_NEWIPC),
        net_ns=root and _can_unshare(linux.CLONE_NEWNET),
        landlock=abi,
        seccomp=seccomp,
        cgroup_memory=cg["memory"],
        cgroup_pids=cg["pids"],
        cgroup_cpuacct=cg["cpuacct"],
        notes=notes,
    )


def interpreter_paths() -> list[str]:
    """Trees a worker must read to import modules: the interpreter, the venv and its site dirs."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    for p in [*site.getsitepackages(), *sys.path]:
        if p and ("site-packages" in p or "dist-packages" in p) and os.path.isdir(p):
            paths.add(os.path.realpath(p))
    # Drop paths nested in another listed path.
    ordered = sorted(paths, key=len)
    return [p for i, p in enumerate(ordered) if not any(p.startswith(q + os.sep) for q in ordered[:i])]


# What Landlock lets a worker read where there is no mount namespace (hence no minimal view, see rootfs).
SYSTEM_READ_ONLY = [
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc",
    "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/sys/devices/system/cpu",
]
