"""One cell in one worker: send the code, enforce the limits that must hold from outside (wall time, CPU
time, output), read the worker's answer without trusting it, classify the outcome.

Time limits: the wall limit is enforced from outside; so is the CPU limit (cgroup cpuacct). Code killed
at the wall limit is classified by what it was doing, measured from outside and independent of how
busy the host is: if its threads together spent most of the run on a CPU or waiting in the run queue
for one (``/proc/<pid>/task/*/schedstat``), or the slot used most of the run in CPU time, it was
computing (``cpu_limit``); otherwise it was sleeping or blocked (``timeout``).

The answer: see ``frames``. Whatever the worker writes that is not the expected answer to this cell is
the code's own failure (``crashed``), never the executor's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from dataclasses import dataclass
from typing import Any

from sandbox import frames, protocol
from sandbox.cgroups import SlotCgroup
from sandbox.result import ExecResult, ExecStatus
from sandbox.zygote_client import SandboxFailure, Worker

CPU_BOUND_SHARE = 0.5  # of the wall time, see the module docstring


class CappedStream:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.buf)
        if room > 0:
            self.buf += data[:room]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="backslashreplace")


@dataclass
class Limits:
    timeout_s: float
    cpu_s: float
    memory_mb: int


@dataclass
class CellRun:
    result: ExecResult
    alive: bool  # the worker answered properly and may take another cell
    cpu_ns_end: int  # the slot's CPU counter when the cell ended (0 without cgroups)


def sched_ns(pid: int) -> int:
    """On-CPU plus run-queue-wait nanoseconds summed over ``pid``'s threads (0 when unreadable). Summed,
    because threads contending for one lock (Python's GIL) take turns: none alone is busy most of the
    time, but together they compute the whole time."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    total = 0
    for tid in tids:
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                run, delay = os.read(fd, 256).split()[:2]
            finally:
                os.close(fd)
            total += int(run) + int(delay)
        except (OSError, ValueError):
            continue
    return total


def _pump(fd: int, stream: CappedStream, flood: asyncio.Future[None], kill_at: int) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            return
        stream.feed(data)
        if stream.total > kill_at and not flood.done():
            flood.set_result(None)
            return


def _drain(fd: int, stream: CappedStream) -> None:
    for _ in range(4096):
        try:
            data = os.read(fd, 1 << 16)
        except OSError:
            return
        if not data:
            return
        stream.feed(data)


async def run(w: Worker, code: str, lim: Limits, cg: SlotCgroup | None, *, output_cap: int, kill_factor: int,
              cpu_from: int | None = None) -> CellRun:
    """Run one cell in ``w``. ``cpu_from``: the slot's CPU counter to charge from (a session charges a cell
    with whatever its threads used since the previous cell ended), default: now. A fresh pool worker's
    scheduler time was read while it idled in the pool (``sched_ready_ns``), off the latency path."""
    loop = asyncio.get_running_loop()
    kill_at = output_cap * kill_factor
    out, err = CappedStream(output_cap), CappedStream(output_cap)
    flood: asyncio.Future[None] = loop.create_future()
    cpu0 = oom0 = 0
    if cg is not None:
        cpu0 = cg.cpu_ns() if cpu_from is None else cpu_from
        oom0 = cg.oom_kills()
    loop.add_reader(w.out_fd, _pump, w.out_fd, out, flood, kill_at)
    loop.add_reader(w.err_fd, _pump, w.err_fd, err, flood, kill_at)
    sched0 = w.sched_ready_ns or sched_ns(w.pid)
    w.sched_ready_ns = 0  # only valid for its first cell
    t0 = time.perf_counter()
    reason = "done"
    violation = ""
    frame: frames.DoneFrame | None = None
    nonce = secrets.token_hex(16)
    done_task = asyncio.ensure_future(frames.read_done(loop, w.sock, nonce))
    try:
        await loop.sock_sendall(w.sock, protocol.encode({"code": code, "nonce": nonce}))
        deadline = t0 + lim.timeout_s
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                reason = "timeout"
                break
            waitables: set[asyncio.Future[Any]] = {done_task, w.exit, flood}
            finished, _ = await asyncio.wait(waitables, timeout=min(remaining, 0.05),
                                             return_when=asyncio.FIRST_COMPLETED)
            if done_task in finished:
                try:
                    frame = done_task.result()
                    reason = "done"
                except frames.ProtocolViolation as e:
                    reason, violation = "protocol", str(e)
                except (OSError, EOFError):
                    reason = "channel"
                break
            if w.exit in finished:
                reason = "exit"
                break
            if flood in finished:
                reason = "flood"
                break
            if cg is not None and (cg.cpu_ns() - cpu0) / 1e9 > lim.cpu_s:
                reason = "cpu"
                break
    except OSError:
        reason = "channel"
    finally:
        if not done_task.done():
            done_task.cancel()
        wall_ms = (time.perf_counter() - t0) * 1000
    alive = reason == "done"
    exit_info: dict[str, Any] = {}
    busy_ms = 0.0
    if reason == "timeout":  # measured before the kill: afterwards the process is gone
        busy_ms = max(sched_ns(w.pid) - sched0, 0) / 1e6 if sched0 else 0.0
    if alive:
        _drain(w.out_fd, out)
        _drain(w.err_fd, err)
    else:
        w.kill()
        try:
            exit_info = await asyncio.wait_for(asyncio.shield(w.exit), 5)
        except (TimeoutError, SandboxFailure):
            exit_info = {}
        _drain(w.out_fd, out)
        _drain(w.err_fd, err)
    loop.remove_reader(w.out_fd)
    loop.remove_reader(w.err_fd)
    cpu_end = cg.cpu_ns() if cg is not None else 0
    cpu_ms = (cpu_end - cpu0) / 1e6 if cg is not None else float(exit_info.get("cpu_ms", 0.0))
    oom = cg is not None and cg.oom_kills() > oom0
    if reason == "timeout" and max(busy_ms, cpu_ms) >= CPU_BOUND_SHARE * wall_ms:
        reason = "cpu_bound_at_deadline"
    status, detail = classify(reason, frame, exit_info, oom, cpu_ms, lim, violation)
    if status is ExecStatus.ok and (out.truncated or err.truncated):
        status = ExecStatus.output_truncated
        detail = f"output exceeded {output_cap} bytes; kept the first {output_cap}"
    result = ExecResult(
        status=status,
        stdout=out.text(),
        stderr=err.text(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        wall_ms=round(wall_ms, 3),
        cpu_ms=round(cpu_ms, 3),
        detail=detail,
    )
    return CellRun(result, alive, cpu_end)


def classify(reason: str, frame: frames.DoneFrame | None, exit_info: dict[str, Any], oom: bool, cpu_ms: float,
             lim: Limits, violation: str = "") -> tuple[ExecStatus, str | None]:
    if oom:
        return ExecStatus.memory_limit, f"memory limit of {lim.memory_mb} MiB exceeded"
    if reason == "done" and frame is not None:
        if not frame.raised:
            return ExecStatus.ok, None
        if frame.exc_type == "MemoryError":
            return ExecStatus.memory_limit, f"memory limit exceeded (MemoryError; limit {lim.memory_mb} MiB)"
        return ExecStatus.error, f"raised {frame.exc_type}"
    if reason == "protocol":
        return ExecStatus.crashed, (f"the code broke the sandbox's result channel ({violation}); "
                                    "the process was stopped")
    if reason == "timeout":
        return ExecStatus.timeout, f"wall-clock limit of {lim.timeout_s:g} s exceeded"
    if reason == "cpu":
        return ExecStatus.cpu_limit, f"CPU limit of {lim.cpu_s:g} s exceeded"
    if reason == "cpu_bound_at_deadline":
        return ExecStatus.cpu_limit, (f"still computing when the time limit of {lim.timeout_s:g} s was reached "
                                      f"({cpu_ms / 1000:.2f} s of CPU used)")
    if reason == "flood":
        return ExecStatus.output_truncated, "output flood: the process was stopped"
    if not exit_info:
        return ExecStatus.sandbox_error, "worker vanished without an exit status"
    sig = exit_info.get("signal")
    if sig is not None:
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_ms >= lim.cpu_s * 1000 * 0.95):
            return ExecStatus.cpu_limit, f"CPU limit of {lim.cpu_s:g} s exceeded"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return ExecStatus.crashed, f"the process was killed by signal {name}"
    code = exit_info.get("code", 0)
    if code == 0:
        return ExecStatus.ok, "the process exited"
    return ExecStatus.error, f"the process exited with status {code}"
