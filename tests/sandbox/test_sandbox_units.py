"""Pieces with no service: output capping, traceback trimming, settings, client transport failures."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from array import array

import pytest

from sandbox import cgroups, prefault
from sandbox.cell import CappedStream
from sandbox.client import SandboxClient, SandboxUnreachable
from sandbox.harness import run_cell
from sandbox.settings import SandboxSettings

from .conftest import swap_kib


def test_capped_stream_keeps_prefix_and_valid_utf8() -> None:
    s = CappedStream(5)
    s.feed("éééé".encode())  # 8 bytes, the cap cuts a character in half
    assert s.truncated and s.total == 8
    text = s.text()
    text.encode("utf-8")  # valid UTF-8, no lone surrogates
    assert text.startswith("éé") and "\\x" in text


def test_traceback_trimmed_to_cells(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict = {}
    raised, exc = run_cell("import json\njson.loads('{')", 3, ns)
    err = capsys.readouterr().err
    assert raised and exc == "JSONDecodeError"
    assert '<cell 3>", line 2' in err and "json/decoder.py" not in err and "harness" not in err


def test_syntax_error_points_at_cell(capsys: pytest.CaptureFixture[str]) -> None:
    raised, exc = run_cell("def f(:\n  pass", 1, {})
    err = capsys.readouterr().err
    assert raised and exc == "SyntaxError" and '<cell 1>", line 1' in err


class _ClosedStream:
    """What sys.stdout/sys.stderr become after the cell runs ``os.close(1)`` / ``os.close(2)``."""

    def write(self, _text: str) -> int:
        raise OSError(9, "Bad file descriptor")

    def flush(self) -> None:
        raise OSError(9, "Bad file descriptor")


def test_cell_that_closed_its_own_output_still_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    # The error report itself cannot be written; run_cell must still return (the worker then sends
    # "done"), never let the write error escape (the supervisor would have to kill the worker).
    monkeypatch.setattr("sys.stdout", _ClosedStream())
    monkeypatch.setattr("sys.stderr", _ClosedStream())
    assert run_cell("print('gone')", 1, {}) == (True, "OSError")
    assert run_cell("raise SystemExit(3)", 2, {}) == (True, "SystemExit")


def test_trailing_expression_is_displayed(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict = {}
    run_cell("a = 2\na * 21", 1, ns)
    run_cell("None", 2, ns)
    assert capsys.readouterr().out == "42\n"


def test_settings_strict_unless_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATHAGENT_DEV", raising=False)
    assert SandboxSettings().strict_mode
    monkeypatch.setenv("MATHAGENT_DEV", "1")
    assert not SandboxSettings().strict_mode
    monkeypatch.setenv("MATHAGENT_SANDBOX_STRICT", "true")
    assert SandboxSettings().strict_mode
    with pytest.raises(ValueError):
        SandboxSettings(url="tcp://0.0.0.0:1")


async def test_transport_failure_is_sandbox_error(tmp_path) -> None:
    async with SandboxClient(f"unix://{tmp_path}/nothing.sock") as c:
        r = await c.execute("print(1)")
        assert r.status == "sandbox_error" and "unreachable" in (r.detail or "")
        with pytest.raises(SandboxUnreachable):
            await c.health()


def _pages(start: int, length: int) -> set[int]:
    return set(range(-(-start // prefault.PAGE), (start + length) // prefault.PAGE))


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


needs_populate = pytest.mark.skipif(not prefault.supported(), reason="kernel lacks MADV_POPULATE_WRITE")


@needs_populate
def test_prefault_learns_the_pages_a_workload_writes() -> None:
    written, untouched = bytearray(64 * prefault.PAGE), bytearray(64 * prefault.PAGE)

    def workload() -> None:
        written[::prefault.PAGE] = b"\x01" * 64

    ranges = prefault.learn(workload)
    learned = set().union(*(_pages(ranges[i], ranges[i + 1]) for i in range(0, len(ranges), 2)))
    target = _pages(_address(written), len(written))
    assert target <= learned
    assert len(_pages(_address(untouched), len(untouched)) & learned) < 8  # selective, not everything


@needs_populate
def test_plan_populate_breaks_copy_on_write_without_changing_memory() -> None:
    buf = bytearray(b"\x07" * (64 * prefault.PAGE))
    start = -(-_address(buf) // prefault.PAGE) * prefault.PAGE
    plan = prefault.Plan(array("Q", [start, 32 * prefault.PAGE]))
    pid = os.fork()
    if pid == 0:  # the forked child shares buf copy-on-write until populate breaks it
        ok = False
        try:
            def owned() -> set[int]:
                got = prefault.owned_pages([(start, start + 32 * prefault.PAGE)])
                return set().union(*(_pages(got[i], got[i + 1]) for i in range(0, len(got), 2)))

            before = owned()
            plan.populate()
            ok = not before and owned() == _pages(start, 32 * prefault.PAGE) and buf == b"\x07" * len(buf)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(os.geteuid() != 0 or not all(cgroups.available().values()),
                    reason="needs cgroup v1 controllers as root")
def test_slot_cgroup_sees_processes_join_and_leave() -> None:
    # The sweep after every execution relies on this listing being current on each call.
    cg = cgroups.SlotCgroup(cgroups.new_instance(), 0)
    cg.create(64, 8)
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert cg.pids() == set()
        for path in cg.procs_files():
            with open(path, "w") as f:
                f.write(str(proc.pid))
        assert cg.pids() == {proc.pid}
        assert cg.sweep() == 1
        proc.wait(5)
        assert cg.pids() == set()
    finally:
        proc.kill()
        proc.wait()
        cg.remove()


@pytest.mark.skipif(os.geteuid() != 0 or not all(cgroups.available().values()),
                    reason="needs cgroup v1 controllers as root")
@pytest.mark.skipif(swap_kib() > 0, reason="with swap the kernel lowers the limit by swapping instead of refusing")
def test_a_limit_the_kernel_refuses_raises_and_is_not_remembered() -> None:
    cg = cgroups.SlotCgroup(cgroups.new_instance(), 0)
    cg.create(512, 8)
    mem = cg.dirs["memory"]
    # Joins its group before allocating (cgroup v1 leaves earlier charges where they were).
    proc = subprocess.Popen([sys.executable, "-c", "import time\nx = b'x' * (100 << 20)\nprint(1, flush=True)\n"
                             "time.sleep(60)"], stdout=subprocess.PIPE,
                            preexec_fn=lambda: (mem / "cgroup.procs").write_text("0"))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"1\n"
        with pytest.raises(cgroups.LimitNotApplied) as e:
            cg.set_memory(48)  # below the 100 MiB the group holds, nothing reclaimable (no swap)
        assert e.value.usage_mb > 90
        assert cg.memory_mb is None  # not cached: the next call writes (and checks) again
        assert int((mem / "memory.limit_in_bytes").read_text()) == 512 << 20  # the old limit stands
        cg.set_memory(512)
        assert cg.memory_mb == 512
        cg.sweep()
        proc.wait(5)
        cg.set_memory(48)  # the group is empty now: the kernel takes it
        assert int((mem / "memory.limit_in_bytes").read_text()) == 48 << 20 and cg.memory_mb == 48
    finally:
        proc.kill()
        proc.wait()
        cg.remove()
