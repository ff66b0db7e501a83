"""The isolation steps: once in the zygote (network and mount namespace, interpreter made readable)
and in every worker before any code arrives (private tmpfs workdir, cgroups, rlimits, uid, Landlock,
seccomp). Each step is applied only when the zygote's config says the host supports it; the worker
reports what it actually applied, and the supervisor lists that in ``/healthz``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
from typing import Any

from sandbox import linux
from sandbox.cgroups import SlotCgroup


def _traversable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return True


def _mask_point(path: str) -> str | None:
    """The first ancestor of ``path`` (or itself) that an unprivileged uid cannot traverse."""
    parts = os.path.normpath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        anc = os.sep.join(parts[:i])
        if not _traversable_by_others(anc):
            return anc
    return None


def expose_paths(paths: list[str]) -> list[str]:
    """In the current (private) mount namespace, make ``paths`` reachable by unprivileged uids.

    Each ancestor with mode 0700 (e.g. /root holding a pyenv interpreter) is covered by an empty
    read-only-content tmpfs (mode 0755) and only the needed trees are bind-mounted back, read-only.
    Everything else under that ancestor disappears from the sandbox's view.
    """
    groups: dict[str, list[str]] = {}
    for p in paths:
        m = _mask_point(p)
        if m is not None:
            groups.setdefault(m, []).append(p)
    # Outer mask points first; a path already under a mask is handled with it.
    masks = sorted(groups, key=len)
    done: list[str] = []
    for mask in masks:
        if any(mask.startswith(d + os.sep) for d in done):
            continue
        inner = [p for m in groups for p in groups[m] if m == mask or m.startswith(mask + os.sep)]
        fds = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in inner if os.path.exists(p)}
        try:
            linux.mount("tmpfs", mask, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755,size=1m")
            for p, fd in fds.items():
                os.makedirs(p, mode=0o755, exist_ok=True)
                linux.mount(f"/proc/self/fd/{fd}", p, None, linux.MS_BIND | linux.MS_REC)
                linux.mount("none", p, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID)
        finally:
            for fd in fds.values():
                os.close(fd)
        done.append(mask)
    return done


def prepare_zygote(cfg: dict[str, Any]) -> dict[str, Any]:
    """Enter an empty network namespace and a private mount namespace once, for every future worker."""
    applied: dict[str, Any] = {}
    prot = cfg["protections"]
    if prot.get("net_ns"):
        linux.unshare(linux.CLONE_NEWNET)
        applied["net_ns"] = True
    if prot.get("mount_ns"):
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
        applied["masked"] = expose_paths(cfg["expose"])
    return applied


def isolate_worker(cfg: dict[str, Any], slot: int, persistent: bool) -> dict[str, Any]:
    """Confine the calling (freshly forked, still root) worker. Returns the protections applied."""
    prot = cfg["protections"]
    uid = cfg["uid_base"] + slot
    applied: dict[str, Any] = {}
    workdir = "/tmp"
    if prot.get("mount_ns"):
        linux.unshare(linux.CLONE_NEWNS)
        owner = f",uid={uid},gid={uid}" if prot.get("uid") else ""
        flags = linux.MS_NOSUID | linux.MS_NODEV
        linux.mount("tmpfs", "/tmp", "tmpfs", flags, f"size={cfg['workdir_mb']}m,nr_inodes=16k,mode=0700{owner}")
        linux.mount("tmpfs", "/dev/shm", "tmpfs", flags | linux.MS_NOEXEC, f"size={cfg['shm_mb']}m,nr_inodes=4k,mode=0700{owner}")
        with contextlib.suppress(OSError):
            linux.mount("proc", "/proc", "proc", flags | linux.MS_NOEXEC, "hidepid=2")
            applied["proc_hidepid"] = True
        applied["mount_ns"] = True
        applied["tmpfs_workdir"] = True
    else:
        workdir = cfg.get("fallback_workdir") or "/tmp"
    os.chdir(workdir)
    if prot.get("cgroups"):
        cg = SlotCgroup(cfg["instance"], slot)
        me = str(os.getpid())
        for f in cg.procs_files():
            with open(f, "w") as fh:
                fh.write(me)
        applied["cgroups"] = True

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
        if applied.get("proc_hidepid"):
            ro.append("/proc")
        else:
            ro.append(f"/proc/{os.getpid()}")
        rw = [workdir, "/dev/shm", "/dev/null"]
        linux.landlock_restrict(ro, rw, abi)
        applied["landlock"] = abi
    if prot.get("seccomp"):
        from sandbox import seccomp_filter

        seccomp_filter.install()
        applied["seccomp"] = True
    return applied
