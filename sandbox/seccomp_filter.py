"""The worker's seccomp deny-list.

A deny-list (default allow) rather than an allow-list: untested allow-lists fail randomly on syscalls
a library happens to need; this list is small, each entry is tested by the adversarial suite, and the
rest of the confinement (uid, Landlock, namespaces, cgroups) does not depend on it.
Denied calls fail with EPERM so hostile code sees an ordinary OSError instead of a crash.
"""

from __future__ import annotations

import errno

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
DENIED = _NO_PROCESS + _NO_NAMESPACES + _NO_KERNEL_SURFACE

CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C


def install() -> None:
    """Load the filter into the calling process (requires no_new_privs or CAP_SYS_ADMIN)."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            f.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            continue  # syscall unknown on this architecture
    # clone without CLONE_THREAD is a fork; clone3 hides its flags in memory, so make glibc fall back.
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    f.load()
