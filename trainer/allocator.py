"""Keep memory that CPU training frees mapped, instead of handing it back to the OS every step.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves big blocks with ``mmap`` and
returns them on free, and trims the heap top, so each training step maps, page-faults and
unmaps its activations again: gigabytes of fresh page faults per step. Where page faults are
expensive (virtual machines, sandboxed kernels such as this project's CI hosts) that dominates
the step (README, "Measurements behind the design"). The settings below keep freed blocks for
reuse: blocks up to 32 MiB come from the heap, which is never trimmed. The cost: the process's RSS stays at its high-water mark
instead of shrinking after it (the peak itself does not grow).

``mallopt`` through ctypes because no library exposes it; the same settings can be given to
any process as the environment variables in ``MALLOC_ENV`` (read by glibc at start-up).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum
TRIM_THRESHOLD = (1 << 31) - 1  # never trim in practice (a C int)
TOP_PAD = 256 << 20  # grow the heap in big steps
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": str(TOP_PAD),
}


def keep_freed_memory() -> bool:
    """Apply the settings to this process (glibc only); True if they took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(option, value) == 1 for option, value in settings)
