"""A fresh worker's memory costs, paid before it joins the pool and without running code in it.

Copy-on-write faults: a worker shares the zygote's memory copy-on-write, and the first cell that touches
sympy writes (reference counts) to ~1,400 shared pages, paying a fault for each (~4-6 ms here).
Running typical sympy lines in every worker moved those faults off the latency path but cost ~80 ms of
CPU per worker, the largest share of a stateless execution's CPU. Instead the zygote learns ONCE which
pages such lines touch (``learn``): a probe child runs ``harness.PREWARM`` (expressions unlike any
benchmark's, sympy's cache cleared afterwards) and reads from ``/proc/self/pagemap`` which of the
zygote's private writable pages it now owns exclusively. Each worker then breaks copy-on-write on
exactly those pages with ``MADV_POPULATE_WRITE`` (``Plan.populate``, Linux 5.14+): the same faults, paid
by the kernel in a few system calls, with no Python computation, so nothing the worker will compute
is precomputed or cached. The advice never changes memory contents; a range that is stale or
unmapped in a worker only fails (ignored). Where it is unavailable, workers run ``harness.prewarm``.

Fork and exit: both cost in proportion to the page-table entries of the zygote's ~57 MB of anonymous
memory. ``collapse_heap`` backs its 2 MiB-aligned spans with transparent huge pages once
(``MADV_COLLAPSE``, Linux 6.1+), so a fork copies one entry per 2 MiB there; measured here it cut the
zygote's CPU per fork by ~1.4 ms and a worker's exit by ~1.4 ms.

Hand-written (ctypes madvise/process_madvise, a pagemap reader) because no maintained package offers them.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import os
import platform
import select
import signal
import time
from collections.abc import Callable

MADV_POPULATE_WRITE = 23  # Linux 5.14
MADV_COLLAPSE = 25  # Linux 6.1
HUGE = 2 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_FILE_OR_SHARED = 1 << 61
_EXCLUSIVE = 1 << 56

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


def _private_writable_mappings() -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            perms = fields[1]
            name = fields[5] if len(fields) > 5 else ""
            if perms[1] == "w" and perms[3] == "p" and not name.startswith(("[vvar", "[vdso", "[vsyscall")):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out.append((lo, hi))
    return out


def collapse_heap() -> int:
    """Back the 2 MiB-aligned spans of the anonymous heap with huge pages; returns the MiB collapsed
    (0 where the kernel cannot). Call before forking workers."""
    done = 0
    with open("/proc/self/maps") as f:
        maps = [line.split() for line in f]
    for fields in maps:
        if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # only anonymous memory and the brk heap (file-backed pages are not copied by fork)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        lo, hi = -(-lo // HUGE) * HUGE, hi // HUGE * HUGE
        if hi > lo and _libc.madvise(lo, hi - lo, MADV_COLLAPSE) == 0:
            done += hi - lo
    return done >> 20


def owned_pages(mappings: list[tuple[int, int]]) -> list[int]:
    """Ranges (start, length, start, length, ...) of pages in ``mappings`` that this process holds as
    exclusive anonymous pages, i.e. has written since the fork (or allocated)."""
    ranges: list[int] = []
    mask = _PRESENT | _FILE_OR_SHARED | _EXCLUSIVE
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for lo, hi in mappings:
            entries = array.array("Q")
            entries.frombytes(os.pread(fd, (hi - lo) // PAGE * 8, lo // PAGE * 8))
            start = -1
            for i, e in enumerate(entries):
                if e & mask == _PRESENT | _EXCLUSIVE:
                    if start < 0:
                        start = i
                elif start >= 0:
                    ranges += [lo + start * PAGE, (i - start) * PAGE]
                    start = -1
            if start >= 0:
                ranges += [lo + start * PAGE, (len(entries) - start) * PAGE]
    finally:
        os.close(fd)
    return ranges


def learn(workload: Callable[[], None], timeout_s: float = 30.0) -> array.array[int]:
    """In a forked probe child, call ``workload`` and report the pages it came to own (start, length,
    ...); empty on failure. Called by the zygote after ``gc.freeze`` and before serving, so workers
    forked later start from the memory layout the probe did."""
    mappings = _private_writable_mappings()
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the probe: never returns
        status = 1
        try:
            os.close(r)
            workload()
            out = array.array("Q", owned_pages(mappings)).tobytes()
            view = memoryview(out)
            while view:
                view = view[os.write(w, view):]
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    data = bytearray()
    deadline = time.monotonic() + timeout_s
    eof = False
    try:
        while (left := deadline - time.monotonic()) > 0 and select.select([r], [], [], left)[0]:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                eof = True
                break
            data += chunk
    finally:
        os.close(r)
        if not eof:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    ranges = array.array("Q")
    if eof and os.waitstatus_to_exitcode(status) == 0 and len(data) % 16 == 0:
        ranges.frombytes(bytes(data))
    return ranges


def supported() -> bool:
    """Whether the kernel knows MADV_POPULATE_WRITE (probed on an empty range)."""
    res = _libc.madvise(None, 0, MADV_POPULATE_WRITE)
    return res == 0 or ctypes.get_errno() != errno.EINVAL


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_NR_PROCESS_MADVISE = {"x86_64": 440, "aarch64": 440}.get(platform.machine())
_UIO_MAXIOV = 1024


class Plan:
    """The learned ranges, laid out once (in the zygote) as the iovec array ``process_madvise`` takes,
    so a worker pays no Python work per range: one system call per 1,024 ranges (Linux 6.13+ accepts
    any advice for the calling process), and one ``madvise`` per range where it does not."""

    def __init__(self, ranges: array.array[int]) -> None:
        self.ranges = ranges
        self.count = len(ranges) // 2
        self.pages = sum(ranges[1::2]) // PAGE
        self._iov = (_IoVec * self.count)()
        for i in range(self.count):
            self._iov[i].base, self._iov[i].len = ranges[2 * i], ranges[2 * i + 1]

    def __bool__(self) -> bool:
        return self.count > 0

    def populate(self, pidfd: int = -1) -> None:
        """Break copy-on-write on every range; stale or unmapped ranges are skipped. ``pidfd``: this
        process's own, opened by the caller while it still may (a worker's seccomp filter refuses
        ``pidfd_open``); without one, one ``madvise`` per range."""
        start = 0
        if _NR_PROCESS_MADVISE is not None:
            while pidfd >= 0 and start < self.count:
                n = min(_UIO_MAXIOV, self.count - start)
                want = sum(self.ranges[2 * start + 1:2 * (start + n):2])
                iov = ctypes.byref(self._iov, start * ctypes.sizeof(_IoVec))
                got = _libc.syscall(ctypes.c_long(_NR_PROCESS_MADVISE), pidfd, iov, ctypes.c_size_t(n),
                                    MADV_POPULATE_WRITE, ctypes.c_uint(0))
                if got != want:
                    break  # refused, or stopped at a stale range: the rest one range at a time
                start += n
        madvise = _libc.madvise
        for i in range(start, self.count):
            madvise(self.ranges[2 * i], self.ranges[2 * i + 1], MADV_POPULATE_WRITE)
