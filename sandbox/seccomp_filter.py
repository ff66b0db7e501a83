"""The worker's seccomp deny-list.

A deny-list (default allow) rather than an allow-list: untested allow-lists fail randomly on syscalls
a library happens to need; this list is small, each entry is tested by the adversarial suite, and the
rest of the confinement (uid, Landlock, namespaces, cgroups) does not depend on it.
Denied calls fail with EPERM so hostile code sees an ordinary OSError instead of a crash; a call made
through another ABI (i386 ``int 0x80``, x32), which no rule here would match, kills the process.

The zygote compiles the filter once (``precompile``, ~3 ms of libseccomp work) and every worker loads
the resulting BPF program with one ``seccomp(2)`` call (``install``, ~0.1 ms): compiling per worker
was the largest CPU cost of forking one. pyseccomp has no call to load a precompiled program, hence
the few ctypes lines in ``_load_bpf``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
from typing import Any

# No new programs or processes (threads stay allowed: clone with CLONE_THREAD).
_NO_PROCESS = ["execve", "execveat", "fork", "vfork"]
# No namespace, mount or root changes.
_NO_NAMESPACES = [
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
]
# No debugging or reading other processes, no kernel attack surface the code never needs.
_NO_KERNEL_SURFACE = [
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "nfsservctl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "personality", "uselib",
]
# No System V IPC or POSIX message queues: objects that outlive the process and are shared by name
# (each worker also has its own IPC namespace; this makes the calls fail before reaching it). "ipc" is the
# multiplexer older ABIs use for all of them (not a native call on x86_64 or aarch64: skipped there).
_NO_IPC = [
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl", "ipc",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
]
# No new sockets at all (socketpair(AF_UNIX) stays, below): nothing to reach by address, whatever the
# family (inet, netlink, vsock, packet, unix...). No pidfds of other processes (host pids are not even
# nameable in the zygote's PID namespace); no watching files change (inotify on a read-only host tree
# in the view would still report host activity).
_NO_REACH = ["socket", "socketcall", "pidfd_open", "inotify_init", "inotify_init1", "inotify_add_watch",
             "fanotify_init", "fanotify_mark"]
DENIED = _NO_PROCESS + _NO_NAMESPACES + _NO_KERNEL_SURFACE + _NO_IPC + _NO_REACH
AF_UNIX = 1

CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C


_PRECOMPILED: bytes | None = None
_SECCOMP_SET_MODE_FILTER = 1
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _build() -> Any:
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    # A call through another ABI (int 0x80 i386, x32) is checked against no rule of this list: kill.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    # Every allowed call walks the filter: a binary tree over the syscall number (libseccomp >= 2.5)
    # checks a handful of numbers instead of the whole list.
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            f.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            continue  # syscall unknown on this architecture
    # clone without CLONE_THREAD is a fork; clone3 hides its flags in memory, so make glibc fall back.
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(deny, "socketpair", sc.Arg(0, sc.NE, AF_UNIX))
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    return f


def compile_bpf() -> bytes:
    """The filter as the raw BPF program libseccomp would load (sock_filter array, 8 bytes each)."""
    f = _build()
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=True) as wf:
            f.export_bpf(wf)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(r)
    prog = b"".join(chunks)
    if not prog or len(prog) % 8:
        raise RuntimeError(f"libseccomp exported a malformed BPF program ({len(prog)} bytes)")
    return prog


def precompile() -> None:
    """Compile once in the zygote; forked workers inherit the program."""
    global _PRECOMPILED
    if platform.machine() in _NR_SECCOMP:  # elsewhere each worker compiles and loads through libseccomp
        _PRECOMPILED = compile_bpf()


def _load_bpf(prog: bytes) -> None:
    nr = _NR_SECCOMP.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"seccomp syscall number unknown on {platform.machine()}")
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    res = libc.syscall(ctypes.c_long(nr), ctypes.c_uint(_SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0),
                       ctypes.byref(fprog))
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp(SET_MODE_FILTER): {os.strerror(err)}")


def install() -> None:
    """Load the filter into the calling process (requires no_new_privs or CAP_SYS_ADMIN): the
    precompiled program when the zygote made one, else compile and load it here."""
    if _PRECOMPILED is not None:
        _load_bpf(_PRECOMPILED)
        return
    f = _build()
    f.load()
