"""The workers' filesystem view, built once in the zygote and inherited by every worker it forks.

A fresh tmpfs becomes the root and receives, read-only and at their host paths, only what code needs: the
interpreter with its standard library, the virtualenv with site-packages, the shared libraries they load
(``/usr/lib``) and the loader's cache; a minimal ``/dev`` (null, zero, full, random, urandom); a ``/proc``
of the zygote's PID namespace with ``hidepid=2``; empty mount points for the per-worker tmpfs work dir
(``/tmp``) and ``/dev/shm``. Then ``pivot_root`` and the old root is detached. The host's ``/run``,
``/var``, ``/home``, its sockets, the project checkout and every other path are not denied but absent:
there is nothing to ``stat``, ``readlink``, watch or ``connect()`` to, whatever Landlock mediates.

The steps and their order are those of bubblewrap (``bwrap.c``: a private mount tree, a tmpfs as the new
root, bind mounts remounted read-only one by one, ``pivot_root(".", ".")`` and a lazy unmount of the old
root), done once here so that a worker's only per-execution mount work stays its own two tmpfs mounts.
Bind sources are opened (``O_PATH``) before anything is mounted, so a source that the scratch mount
would shadow is still reached.
"""

from __future__ import annotations

import contextlib
import os
import stat

from sandbox import linux

# The new root is assembled on a tmpfs mounted over /tmp of the zygote's private mount namespace
# (nothing on the host changes), then becomes "/".
SCRATCH = "/tmp"
DEV_NODES = ("null", "zero", "full", "random", "urandom")
# Host paths every worker may need besides the interpreter trees: shared libraries, the loader cache,
# the CPU topology (os.cpu_count, OpenBLAS).
SYSTEM_PATHS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/etc/ld.so.cache", "/sys/devices/system/cpu")
# usr-merged hosts make these symlinks into /usr; the view repeats the links (or binds real dirs).
ROOT_LINKS = ("/lib", "/lib64", "/lib32")
WORKDIR = "/tmp"
SHM = "/dev/shm"

_RO = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV
_DEV = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC


def view_paths(interpreter: list[str]) -> list[str]:
    """The host paths bound into the view: the interpreter trees and the system paths that exist,
    without any path nested in another one."""
    paths = {os.path.realpath(p) for p in [*interpreter, *SYSTEM_PATHS] if os.path.exists(p)}
    for link in ROOT_LINKS:
        if os.path.isdir(link) and not os.path.islink(link):
            paths.add(link)
    ordered = sorted(paths, key=len)
    return [p for i, p in enumerate(ordered) if not any(p.startswith(q.rstrip("/") + "/") for q in ordered[:i])]


def read_only_paths(binds: list[str]) -> list[str]:
    """What a worker may read inside the view (for Landlock, on top of the view)."""
    return [*binds, *(f"/dev/{d}" for d in DEV_NODES), "/proc"]


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind(fd: int, target: str, flags: int) -> None:
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        _mkdirs(target)
    else:
        _mkdirs(os.path.dirname(target))
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    linux.mount(f"/proc/self/fd/{fd}", target, None, linux.MS_BIND | linux.MS_REC)
    linux.mount("none", target, None, flags)


def build_and_enter(binds: list[str]) -> None:
    """In a private mount namespace (the caller unshared it), assemble the view and make it the root.
    The /proc mounted here belongs to the caller's PID namespace: in the zygote's own one it lists
    only the zygote and its workers, and ``hidepid=2`` hides from each worker everything but itself."""
    linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
    sources: dict[str, int] = {}
    devs: dict[str, int] = {}
    try:
        for p in binds:
            sources[p] = os.open(p, os.O_PATH | os.O_CLOEXEC)
        for d in DEV_NODES:
            with contextlib.suppress(FileNotFoundError):
                devs[d] = os.open(f"/dev/{d}", os.O_PATH | os.O_CLOEXEC)
        new = SCRATCH
        linux.mount("tmpfs", new, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755,size=1m,nr_inodes=4k")
        for p, fd in sources.items():
            _bind(fd, new + p, _RO)
        for link in ROOT_LINKS:
            if os.path.islink(link):
                os.symlink(os.readlink(link), new + link)
        _mkdirs(new + "/dev")
        linux.mount("tmpfs", new + "/dev", "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")
        for d, fd in devs.items():
            # Device files stay writable on a read-only bind mount (the kernel exempts special files).
            _bind(fd, f"{new}/dev/{d}", _DEV)
        for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
            os.symlink(to, f"{new}/dev/{name}")
        _mkdirs(new + SHM)
        _mkdirs(new + WORKDIR)
        _mkdirs(new + "/proc")
        linux.mount("proc", new + "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, "hidepid=2")
    finally:
        for fd in [*sources.values(), *devs.values()]:
            os.close(fd)
    os.chdir(new)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")
    linux.mount("none", "/", None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)
