"""The isolation steps: once in the zygote (IPC, UTS, network and mount namespaces and the filesystem view of
``rootfs``; the PID namespace is entered by ``zygote.main`` itself) and in every worker before any code
arrives (its slot's cgroups and network namespace, a private IPC namespace and tmpfs work dir, rlimits,
uid, Landlock, seccomp). Each step is applied only when the zygote's config says the host supports it;
the worker reports what it actually applied, and the supervisor lists that in ``/healthz``.

What is paid per worker is kept to what must be private to one execution: the mount and IPC namespaces
(so its tmpfs and any IPC object die with it) and its two tmpfs mounts. The view, /proc and the slots'
network namespaces are made once and shared: a network namespace per slot (not per worker) keeps
workers of different slots from seeing each other's sockets in /proc/net, while consecutive workers of
one slot cannot leave anything in it (no capabilities, no sockets outlive their process).
"""

from __future__ import annotations

import os
import resource
import socket
from dataclasses import dataclass, field
from typing import Any

from sandbox import linux, rootfs
from sandbox.cgroups import CONTROLLERS, PREFIX, ROOT

HOSTNAME = "sandbox"


@dataclass
class ZygoteHandles:
    """Descriptors the zygote keeps for the host objects workers join after the host's paths are gone."""

    cgroup_dirs: dict[str, int] = field(default_factory=dict)  # controller -> this instance's group (O_PATH)
    own_netns: int | None = None  # the zygote's empty network namespace
    slot_netns: dict[int, int] = field(default_factory=dict)  # slot -> its network namespace

    def netns_for(self, slot: int) -> int | None:
        """The slot's network namespace, created on first use (zygote only)."""
        if self.own_netns is None:
            return None
        fd = self.slot_netns.get(slot)
        if fd is None:
            linux.unshare(linux.CLONE_NEWNET)
            try:
                fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                linux.setns(self.own_netns, linux.CLONE_NEWNET)
            self.slot_netns[slot] = fd
        return fd


def prepare_zygote(cfg: dict[str, Any]) -> tuple[dict[str, Any], ZygoteHandles]:
    """Enter private IPC, network and mount namespaces once and pivot into the workers' view."""
    applied: dict[str, Any] = {}
    prot = cfg["protections"]
    handles = ZygoteHandles()
    if prot.get("cgroups"):  # opened while /sys/fs/cgroup is still in view
        for c in CONTROLLERS:
            handles.cgroup_dirs[c] = os.open(ROOT / c / f"{PREFIX}{cfg['instance']}",
                                             os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    flags = 0
    for name, flag in (("net_ns", linux.CLONE_NEWNET), ("ipc_ns", linux.CLONE_NEWIPC), ("mount_ns", linux.CLONE_NEWNS)):
        if prot.get(name):
            flags |= flag
    if prot.get("mount_ns"):
        flags |= linux.CLONE_NEWUTS  # the host's name is host metadata too (same privilege as a mount ns)
    if flags:
        linux.unshare(flags)
    if flags & linux.CLONE_NEWUTS:
        socket.sethostname(HOSTNAME)
        applied["uts_ns"] = True
    if prot.get("net_ns"):
        handles.own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        applied["net_ns"] = True
    if prot.get("ipc_ns"):
        applied["ipc_ns"] = True
    if prot.get("mount_ns"):
        rootfs.build_and_enter(cfg["view"])
        applied["rootfs"] = True
        applied["proc_hidepid"] = True
    if prot.get("pid_ns"):
        applied["pid_ns"] = os.getpid() == 1
    return applied, handles


def enter_slot(handles: ZygoteHandles, slot: int, netns: int | None) -> dict[str, Any]:
    """First steps of a freshly forked worker, still root and still holding the zygote's descriptors:
    join the slot's cgroups (charged from here on) and its network namespace."""
    applied: dict[str, Any] = {}
    for dirfd in handles.cgroup_dirs.values():
        fd = os.open(f"slot{slot}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            os.write(fd, b"0")  # 0: the writing process, whatever its pid in this namespace
        finally:
            os.close(fd)
    if handles.cgroup_dirs:
        applied["cgroups"] = True
    if netns is not None:
        linux.setns(netns, linux.CLONE_NEWNET)
        applied["slot_netns"] = True
    return applied


def isolate_worker(cfg: dict[str, Any], slot: int, persistent: bool) -> dict[str, Any]:
    """Confine the calling (freshly forked, still root) worker. Returns the protections applied."""
    prot = cfg["protections"]
    uid = cfg["uid_base"] + slot
    applied: dict[str, Any] = {}
    workdir = rootfs.WORKDIR
    if prot.get("mount_ns"):
        linux.unshare(linux.CLONE_NEWNS | (linux.CLONE_NEWIPC if prot.get("ipc_ns") else 0))
        owner = f",uid={uid},gid={uid}" if prot.get("uid") else ""
        flags = linux.MS_NOSUID | linux.MS_NODEV
        linux.mount("tmpfs", workdir, "tmpfs", flags, f"size={cfg['workdir_mb']}m,nr_inodes=16k,mode=0700{owner}")
        linux.mount("tmpfs", rootfs.SHM, "tmpfs", flags | linux.MS_NOEXEC,
                    f"size={cfg['shm_mb']}m,nr_inodes=4k,mode=0700{owner}")
        applied["mount_ns"] = True
        applied["tmpfs_workdir"] = True
        if prot.get("ipc_ns"):
            applied["ipc_ns_per_worker"] = True
    else:
        workdir = cfg.get("fallback_workdir") or "/tmp"
    os.chdir(workdir)

    cpu = int(cfg["cpu_backstop_s"] if not persistent else cfg["session_cpu_backstop_s"])
    with open("/proc/self/statm") as statm:
        vsz = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    as_limit = vsz + (cfg["as_extra_mb"] << 20)
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_AS: (as_limit, as_limit),
        resource.RLIMIT_FSIZE: (cfg["workdir_mb"] << 20, cfg["workdir_mb"] << 20),
        resource.RLIMIT_NOFILE: (cfg["nofile"], cfg["nofile"]),
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_NPROC: (cfg["pids_max"], cfg["pids_max"]),
        resource.RLIMIT_MEMLOCK: (0, 0),
        resource.RLIMIT_MSGQUEUE: (0, 0),
    }
    for res, lim in limits.items():
        resource.setrlimit(res, lim)
    applied["rlimits"] = True

    os.environ.clear()
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "MPLCONFIGDIR": workdir, "PATH": "/usr/bin:/bin",
                       "OPENBLAS_NUM_THREADS": "1", "LANG": "C.UTF-8", "MPLBACKEND": "Agg"})
    if prot.get("uid"):
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        applied["uid"] = uid
    linux.prctl(linux.PR_SET_PDEATHSIG, 9)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    abi = int(prot.get("landlock") or 0)
    if abi:
        ro = list(cfg["read_only"])
        if not prot.get("mount_ns"):
            ro.append(f"/proc/{os.getpid()}")
        rw = [workdir, rootfs.SHM, "/dev/null"]
        linux.landlock_restrict(ro, rw, abi)
        applied["landlock"] = abi
    if prot.get("seccomp"):
        from sandbox import seccomp_filter

        seccomp_filter.install()
        applied["seccomp"] = True
    return applied
