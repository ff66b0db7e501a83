"""Thin ctypes wrappers for the Linux calls Python 3.11 lacks: unshare, setns, mount, umount2, pivot_root,
prctl and Landlock.

Hand-written because no maintained PyPI package covers Landlock ABI 6+ (scoped signals and abstract
sockets) together with mount namespaces; each wrapper raises OSError with the real errno.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000

MNT_DETACH = 2

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

_SYSCALLS = {
    "x86_64": {"landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
               "pivot_root": 155},
    "aarch64": {"landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
                "pivot_root": 41},
}


def _check(res: int) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
    )


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype))


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), flags))


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_nr("pivot_root"), new_root.encode(), put_old.encode()))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5))


def scrub_initial_strings() -> None:
    """Zero the environment strings the kernel placed on this process's stack at exec.

    ``/proc/<pid>/environ`` reads them from that memory, and forked children inherit it, so whatever the
    process was started with stays readable by every child even after ``os.environ.clear()``. The C
    ``environ`` array is first pointed at fresh copies of ``os.environ`` (``putenv``), so nothing that
    calls ``getenv`` later loses a variable."""
    for key, value in os.environ.items():
        os.putenv(key, value)
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    env_start, env_end = int(fields[47]), int(fields[48])
    if 0 < env_start < env_end:
        ctypes.memset(env_start, 0, env_end - env_start)


# ---- Landlock -------------------------------------------------------------------------------

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

FILE_ONLY_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _nr(name: str) -> int:
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(38, f"syscall numbers unknown on {platform.machine()}")
    return table[name]


def landlock_abi() -> int:
    """The Landlock ABI version the running kernel offers, 0 when Landlock is unavailable."""
    try:
        res = _libc.syscall(_nr("landlock_create_ruleset"), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except OSError:
        return 0
    return max(int(res), 0)


def landlock_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def landlock_restrict(read_only: list[str], read_write: list[str], abi: int) -> None:
    """Confine the calling thread (and its future threads) to the given paths, deny all TCP bind/connect
    and scope signals and abstract unix sockets to this domain. Paths that do not exist are skipped."""
    fs = landlock_fs_rights(abi)
    attr = _RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0, 0)
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _check(
        _libc.syscall(_nr("landlock_create_ruleset"), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    )
    try:
        ro = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
        for rights, paths in ((ro, read_only), (fs, read_write)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    allowed = rights
                    if not os.path.isdir(path):
                        allowed &= FILE_ONLY_RIGHTS
                    rule = _PathBeneathAttr(allowed & fs, fd)
                    _check(_libc.syscall(_nr("landlock_add_rule"), ruleset, 1, ctypes.byref(rule), 0))
                finally:
                    os.close(fd)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        _check(_libc.syscall(_nr("landlock_restrict_self"), ruleset, 0))
    finally:
        os.close(ruleset)
