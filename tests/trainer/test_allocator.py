"""``keep_freed_memory``: a freed block stays mapped for reuse instead of going back to the OS."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys, psutil, torch
from trainer.allocator import keep_freed_memory
if sys.argv[1] == "1":
    assert keep_freed_memory()
proc = psutil.Process()
x = torch.ones(4 << 20)  # 16 MiB
held = proc.memory_info().rss
del x
print((held - proc.memory_info().rss) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_returned_by_default_and_kept_with_the_settings():
    def released_mib(apply: bool) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, "1" if apply else "0"], capture_output=True, text=True,
                             check=True, timeout=120)
        return int(out.stdout.strip())

    assert released_mib(False) >= 12  # glibc unmaps the block on free: the next step faults it in again
    assert released_mib(True) <= 1
