"""The supervisor: a pool of pre-forked single-use workers, stateful session workers, and every limit
that must hold from outside the worker (wall time, CPU time, memory, output).

Stateless: a ready, already-isolated worker takes the code, the supervisor collects the result, then
kills the worker; sweeping its cgroup and forking a replacement happen in the background (off the
latency path). Sessions: one worker per session keeps its globals between cells; if it dies, the
result says so (``state_reset``) and the next cell first replays the session's successful cells with
their output discarded.

If the zygote itself dies, a watcher starts a new one (same instance, cgroups and uids) with backoff;
meanwhile executions wait for a worker, and every pool slot refills as soon as the zygote is back.

Time limits: the wall limit is enforced from outside; so is the CPU limit (cgroup cpuacct). Code killed
at the wall limit is classified by what it was doing, measured from outside and independent of how
busy the host is: if its main thread spent most of the run on a CPU or waiting in the run queue for
one (``/proc/<pid>/schedstat``), or the slot used most of the run in CPU time, it was computing
(``cpu_limit``); otherwise it was sleeping or blocked (``timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox import capabilities, cgroups, protocol
from sandbox.cgroups import SlotCgroup
from sandbox.result import ExecResult, ExecStatus
from sandbox.settings import SandboxSettings
from sandbox.zygote_client import SandboxFailure, Worker, Zygote

log = logging.getLogger("sandbox.supervisor")


class SandboxUnavailable(RuntimeError):
    """Strict mode and a protection is missing on this host."""


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
class Session:
    id: str
    slot: int
    cg: SlotCgroup | None
    worker: Worker | None = None
    history: list[str] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


def _sched_ns(pid: int) -> int:
    """On-CPU plus run-queue-wait nanoseconds of ``pid``'s main thread (0 when unreadable)."""
    try:
        fd = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            run, delay = os.read(fd, 256).split()[:2]
        finally:
            os.close(fd)
        return int(run) + int(delay)
    except (OSError, ValueError):
        return 0


CPU_BOUND_SHARE = 0.5  # of the wall time, see the module docstring


@dataclass
class _Limits:
    timeout_s: float
    cpu_s: float
    memory_mb: int


class Supervisor:
    def __init__(self, settings: SandboxSettings | None = None,
                 host: capabilities.HostProtections | None = None) -> None:
        self.settings = settings or SandboxSettings()
        self.host = host or capabilities.probe()
        self.instance = cgroups.new_instance() if os.path.exists("/proc/self/ns/pid") else secrets.token_hex(6)
        self.uid_base = self.settings.uid_base or 1_000_000 + random.randrange(0, 1_000_000) * 1024
        self.n_slots = self.settings.pool_size + self.settings.max_sessions
        self.zygote: Zygote | None = None
        self._ready: asyncio.Queue[Worker] = asyncio.Queue()
        self._cgroups: dict[int, SlotCgroup] = {}
        self._busy: dict[int, Worker] = {}  # slot -> worker (stateless slots running or being recycled)
        self._sessions: dict[str, Session] = {}
        self._free_session_slots: list[int] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ttl_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._zygote_up = asyncio.Event()
        self._cfg: dict[str, Any] = {}
        self.zygote_restarts = 0
        self.stale_cgroups_removed: list[str] = []
        self._fallback_dir: str | None = None
        self.applied: dict[str, Any] = {}
        self.missing: list[str] = []
        self.closed = False

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def use_cgroups(self) -> bool:
        h = self.host
        return h.cgroup_memory and h.cgroup_pids and h.cgroup_cpuacct

    def _zygote_config(self) -> dict[str, Any]:
        s, h = self.settings, self.host
        interp = capabilities.interpreter_paths()
        if not h.mount_ns:
            self._fallback_dir = tempfile.mkdtemp(prefix="mathagent-sandbox-")
            os.chmod(self._fallback_dir, 0o1777)
        return {
            "instance": self.instance,
            "uid_base": self.uid_base,
            "protections": {
                "uid": h.uid,
                "mount_ns": h.mount_ns,
                "net_ns": h.net_ns,
                "landlock": h.landlock,
                "seccomp": h.seccomp,
                "cgroups": self.use_cgroups,
            },
            "expose": interp,
            "read_only": capabilities.SYSTEM_READ_ONLY + interp,
            "workdir_mb": s.workdir_mb,
            "shm_mb": s.shm_mb,
            "nofile": s.nofile,
            "pids_max": s.pids_max,
            "cpu_backstop_s": int(s.max_timeout_s) + 2,
            "session_cpu_backstop_s": 4 * 3600,
            "as_extra_mb": 2 * s.max_memory_mb + 1024,
            "fallback_workdir": self._fallback_dir,
            "prewarm": s.prewarm,
        }

    async def start(self) -> None:
        self.missing = self.host.missing()
        if self.settings.strict_mode and self.missing:
            raise SandboxUnavailable(
                "strict mode: missing protections: " + ", ".join(self.missing)
                + " (run `python -m sandbox doctor`; set MATHAGENT_DEV=1 to run without them)"
            )
        if self.missing:
            log.warning("sandbox running WITHOUT: %s", ", ".join(self.missing))
        if self.use_cgroups:
            self.stale_cgroups_removed = await asyncio.to_thread(cgroups.sweep_stale, self.instance)
            if self.stale_cgroups_removed:
                log.info("removed cgroups of %d dead sandbox instance(s)", len(self.stale_cgroups_removed))
            for slot in range(self.n_slots):
                cg = SlotCgroup(self.instance, slot)
                cg.create(self.settings.memory_mb, self.settings.pids_max)
                self._cgroups[slot] = cg
        self._free_session_slots = list(range(self.settings.pool_size, self.n_slots))[::-1]
        self._cfg = self._zygote_config()
        self.zygote = Zygote(self._cfg)
        await self.zygote.start()
        first = await self.zygote.spawn(0, persistent=False)
        self.applied = {**self.zygote.applied, **first.applied}
        self._ready.put_nowait(first)
        self._zygote_up.set()
        await asyncio.gather(*(self._refill(slot) for slot in range(1, self.settings.pool_size)))
        self._ttl_task = asyncio.create_task(self._evict_loop())
        self._watch_task = asyncio.create_task(self._watch_zygote())

    async def _watch_zygote(self) -> None:
        """Restart the zygote whenever it dies (with backoff while restarts fail)."""
        delay = 0.05
        while not self.closed:
            assert self.zygote is not None
            await self.zygote.wait_dead()
            if self.closed:
                return
            self._zygote_up.clear()
            log.error("sandbox zygote died; restarting it")
            await asyncio.to_thread(self.zygote.stop)
            while not self.closed:
                z = Zygote(self._cfg)
                try:
                    await z.start()
                except (SandboxFailure, OSError) as e:
                    log.error("zygote restart failed: %s (retrying in %.1f s)", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if self.closed:
                    z.stop()
                    return
                self.zygote = z
                self.zygote_restarts += 1
                self._zygote_up.set()
                log.warning("sandbox zygote restarted (pid %s)", z.proc.pid if z.proc else None)
                delay = 0.05
                break

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._ttl_task, self._watch_task):
            if task:
                task.cancel()
        for t in list(self._tasks):
            t.cancel()
        while not self._ready.empty():
            self._ready.get_nowait().close()
        for w in list(self._busy.values()):
            w.close()
        for s in list(self._sessions.values()):
            if s.worker:
                s.worker.close()
        self._sessions.clear()
        if self.zygote:
            self.zygote.stop()
        for cg in self._cgroups.values():
            cg.sweep()
        for cg in self._cgroups.values():
            await asyncio.to_thread(cg.remove)
        if self._fallback_dir:
            import shutil

            shutil.rmtree(self._fallback_dir, ignore_errors=True)

    async def __aenter__(self) -> Supervisor:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _bg(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _spawn(self, slot: int, persistent: bool) -> Worker:
        """A new worker for ``slot``, waiting (bounded) for the zygote while it is being restarted."""
        try:
            await asyncio.wait_for(self._zygote_up.wait(), 30)
        except TimeoutError as e:
            raise SandboxFailure("the zygote is down and did not come back within 30 s") from e
        assert self.zygote is not None
        return await self.zygote.spawn(slot, persistent=persistent)

    async def _refill(self, slot: int) -> None:
        """Fork the slot's next worker; retries (with backoff) until it succeeds or we close."""
        delay = 0.05
        attempt = 0
        while not self.closed:
            attempt += 1
            try:
                w = await self._spawn(slot, persistent=False)
            except (SandboxFailure, TimeoutError, OSError) as e:
                if self.closed:  # shutting down: the zygote is gone on purpose
                    return
                log.error("spawning worker for slot %d failed (attempt %d): %s", slot, attempt, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.closed:
                w.close()
                return
            self._ready.put_nowait(w)
            return

    async def _recycle(self, w: Worker, session_slot: bool = False) -> None:
        """Kill everything in the slot, wait for the worker to be reaped, then fork its replacement."""
        w.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(w.exit), 5)
        w.close()
        cg = self._cgroups.get(w.slot)
        if cg is not None:
            for _ in range(20):
                if not cg.sweep():
                    break
                await asyncio.sleep(0.01)
        self._busy.pop(w.slot, None)
        if not session_slot:
            await self._refill(w.slot)

    # ---- limits ---------------------------------------------------------------------------

    def _limits(self, timeout_s: float | None, memory_mb: int | None) -> _Limits:
        s = self.settings
        t = min(float(timeout_s) if timeout_s else s.timeout_s, s.max_timeout_s)
        m = min(int(memory_mb) if memory_mb else s.memory_mb, s.max_memory_mb)
        return _Limits(t, min(s.cpu_s or t, t) if s.cpu_s else t, max(m, 32))

    # ---- execution ------------------------------------------------------------------------

    async def execute(self, code: str, *, session_id: str | None = None, timeout_s: float | None = None,
                      memory_mb: int | None = None) -> ExecResult:
        if self.closed or self.zygote is None:
            return ExecResult(status=ExecStatus.sandbox_error, detail="sandbox is not running", session_id=session_id)
        if len(code.encode("utf-8", "surrogatepass")) > self.settings.max_code_bytes:
            return ExecResult(status=ExecStatus.error, stderr=f"code exceeds {self.settings.max_code_bytes} bytes\n",
                              detail="code too large", session_id=session_id)
        limits = self._limits(timeout_s, memory_mb)
        try:
            if session_id is None:
                return await self._execute_stateless(code, limits)
            return await self._execute_session(session_id, code, limits)
        except (SandboxFailure, OSError, TimeoutError) as e:
            log.exception("sandbox failure")
            return ExecResult(status=ExecStatus.sandbox_error, detail=f"sandbox failure: {type(e).__name__}: {e}"[:300],
                              session_id=session_id)

    async def _take_ready(self) -> Worker:
        while True:
            if not self._ready.empty():  # the usual case: no task and no timer on the latency path
                w = self._ready.get_nowait()
            else:
                try:
                    w = await asyncio.wait_for(self._ready.get(), 60)
                except TimeoutError as e:
                    raise SandboxFailure("no worker became ready within 60 s") from e
            if w.exit.done():
                self._busy[w.slot] = w
                self._bg(self._recycle(w))
                continue
            return w

    async def _execute_stateless(self, code: str, limits: _Limits) -> ExecResult:
        w = await self._take_ready()
        self._busy[w.slot] = w
        try:
            result, _alive = await self._run(w, code, limits)
        finally:
            w.kill()
            self._bg(self._recycle(w))
        return result

    async def _new_session(self, session_id: str) -> Session | None:
        if not self._free_session_slots:
            idle = [s for s in self._sessions.values() if not s.lock.locked()]
            if not idle:
                return None
            await self._drop_session(min(idle, key=lambda s: s.last_used))
        if not self._free_session_slots:
            return None
        slot = self._free_session_slots.pop()
        s = Session(session_id, slot, self._cgroups.get(slot))
        self._sessions[session_id] = s
        return s

    async def _drop_session(self, s: Session) -> None:
        if self._sessions.get(s.id) is s:
            del self._sessions[s.id]
        s.closed = True
        if s.worker is not None:
            w, s.worker = s.worker, None
            await self._recycle(w, session_slot=True)
        elif s.cg is not None:
            s.cg.sweep()
        self._free_session_slots.append(s.slot)

    async def close_session(self, session_id: str) -> bool:
        s = self._sessions.get(session_id)
        if s is None:
            return False
        if s.worker is not None:
            s.worker.kill()
        async with s.lock:
            await self._drop_session(s)
        return True

    async def _execute_session(self, session_id: str, code: str, limits: _Limits) -> ExecResult:
        s = self._sessions.get(session_id)
        if s is None:
            s = await self._new_session(session_id)
            if s is None:
                return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                                  detail=f"too many live sessions ({self.settings.max_sessions}), all busy")
        async with s.lock:
            if s.closed:
                return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id, detail="session was closed")
            s.last_used = time.monotonic()
            replayed = False
            if s.worker is None or s.worker.exit.done():
                if s.worker is not None:
                    old, s.worker = s.worker, None
                    await self._recycle(old, session_slot=True)
                s.worker = await self._spawn(s.slot, persistent=True)
                if s.history:
                    replayed = True
                    kept: list[str] = []
                    for past in s.history:
                        r, alive = await self._run(s.worker, past, limits)
                        if not alive:
                            old, s.worker = s.worker, None
                            await self._recycle(old, session_slot=True)
                            s.worker = await self._spawn(s.slot, persistent=True)
                            break
                        if r.status in (ExecStatus.ok, ExecStatus.output_truncated):
                            kept.append(past)
                    s.history = kept
            result, alive = await self._run(s.worker, code, limits)
            result.session_id = session_id
            s.last_used = time.monotonic()
            if not alive:
                old, s.worker = s.worker, None
                await self._recycle(old, session_slot=True)
                result.state_reset = True
                note = (f"The session worker was lost, so all session state was reset; before the next cell the "
                        f"{len(s.history)} earlier successful cell(s) will be replayed with their output discarded.")
                result.detail = f"{result.detail}. {note}" if result.detail else note
            elif result.status in (ExecStatus.ok, ExecStatus.output_truncated):
                s.history.append(code)
            if replayed:
                result.state_reset = True
            return result

    async def _evict_loop(self) -> None:
        ttl = self.settings.session_ttl_s
        while True:
            await asyncio.sleep(min(1.0, ttl / 4))
            now = time.monotonic()
            for s in list(self._sessions.values()):
                if not s.lock.locked() and now - s.last_used > ttl:
                    log.info("evicting idle session %s", s.id)
                    async with s.lock:
                        await self._drop_session(s)

    # ---- one cell in one worker -----------------------------------------------------------

    def _pump(self, fd: int, stream: CappedStream, flood: asyncio.Future[None], kill_at: int) -> None:
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

    @staticmethod
    def _drain(fd: int, stream: CappedStream) -> None:
        for _ in range(4096):
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            stream.feed(data)

    async def _run(self, w: Worker, code: str, lim: _Limits) -> tuple[ExecResult, bool]:
        """Run one cell in ``w``; returns the result and whether the worker is still usable."""
        loop = asyncio.get_running_loop()
        cap = self.settings.output_cap
        kill_at = cap * self.settings.output_kill_factor
        out, err = CappedStream(cap), CappedStream(cap)
        flood: asyncio.Future[None] = loop.create_future()
        cg = self._cgroups.get(w.slot)
        cpu0 = oom0 = 0
        if cg is not None:
            cg.set_memory(lim.memory_mb)
            cpu0, oom0 = cg.cpu_ns(), cg.oom_kills()
        loop.add_reader(w.out_fd, self._pump, w.out_fd, out, flood, kill_at)
        loop.add_reader(w.err_fd, self._pump, w.err_fd, err, flood, kill_at)
        sched0 = _sched_ns(w.pid)
        t0 = time.perf_counter()
        reason = "done"
        msg: dict[str, Any] = {}
        done_task = asyncio.ensure_future(protocol.arecv(loop, w.sock))
        try:
            await loop.sock_sendall(w.sock, protocol.encode({"code": code}))
            deadline = t0 + lim.timeout_s
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    reason = "timeout"
                    break
                waitables: set[asyncio.Future[Any]] = {done_task, w.exit, flood}
                finished, _ = await asyncio.wait(
                    waitables, timeout=min(remaining, 0.05),
                    return_when=asyncio.FIRST_COMPLETED)
                if done_task in finished:
                    try:
                        msg = done_task.result()
                        reason = "done" if msg.get("op") == "done" else "channel"
                    except (OSError, EOFError, ValueError):
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
            busy_ms = (_sched_ns(w.pid) - sched0) / 1e6 if sched0 else 0.0
        if alive:
            self._drain(w.out_fd, out)
            self._drain(w.err_fd, err)
        else:
            w.kill()
            try:
                exit_info = await asyncio.wait_for(asyncio.shield(w.exit), 5)
            except (TimeoutError, SandboxFailure):
                exit_info = {}
            self._drain(w.out_fd, out)
            self._drain(w.err_fd, err)
        loop.remove_reader(w.out_fd)
        loop.remove_reader(w.err_fd)
        cpu_ms = (cg.cpu_ns() - cpu0) / 1e6 if cg is not None else float(exit_info.get("cpu_ms", 0.0))
        oom = cg is not None and cg.oom_kills() > oom0
        if reason == "timeout" and max(busy_ms, cpu_ms) >= CPU_BOUND_SHARE * wall_ms:
            reason = "cpu_bound_at_deadline"
        status, detail = self._classify(reason, msg, exit_info, oom, cpu_ms, lim)
        if status is ExecStatus.ok and (out.truncated or err.truncated):
            status = ExecStatus.output_truncated
            detail = f"output exceeded {cap} bytes; kept the first {cap}"
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
        return result, alive

    @staticmethod
    def _classify(reason: str, msg: dict[str, Any], exit_info: dict[str, Any], oom: bool, cpu_ms: float,
                  lim: _Limits) -> tuple[ExecStatus, str | None]:
        if oom:
            return ExecStatus.memory_limit, f"memory limit of {lim.memory_mb} MiB exceeded"
        if reason == "done":
            if not msg.get("raised"):
                return ExecStatus.ok, None
            if msg.get("exc_type") == "MemoryError":
                return ExecStatus.memory_limit, f"memory limit exceeded (MemoryError; limit {lim.memory_mb} MiB)"
            return ExecStatus.error, f"raised {msg.get('exc_type')}"
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

    # ---- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        a = self.applied
        protections = {
            "uid_per_slot": "uid" in a,
            "net_namespace": bool(a.get("net_ns")),
            "mount_namespace": bool(a.get("mount_ns")),
            "tmpfs_workdir": bool(a.get("tmpfs_workdir")),
            "proc_hidepid": bool(a.get("proc_hidepid")),
            "landlock_abi": int(a.get("landlock", 0)),
            "seccomp": bool(a.get("seccomp")),
            "cgroups": bool(a.get("cgroups")),
            "rlimits": bool(a.get("rlimits")),
        }
        pids = [w.pid for w in list(self._busy.values())] + [
            s.worker.pid for s in self._sessions.values() if s.worker is not None]
        pids += [w.pid for w in list(self._ready._queue)]  # type: ignore[attr-defined]
        return {
            "status": "ok" if self.zygote is not None and not self.zygote.dead and not self.closed else "down",
            "instance": self.instance,
            "supervisor_pid": os.getpid(),
            "zygote_restarts": self.zygote_restarts,
            "stale_cgroups_removed": len(self.stale_cgroups_removed),
            "strict": self.settings.strict_mode,
            "protections": protections,
            "missing": self.missing,
            "pool_size": self.settings.pool_size,
            "ready_workers": self._ready.qsize(),
            "sessions": len(self._sessions),
            "max_sessions": self.settings.max_sessions,
            "uid_range": [self.uid_base, self.uid_base + self.n_slots],
            "worker_pids": sorted(pids),
            "zygote_pid": self.zygote.proc.pid if self.zygote and self.zygote.proc else None,
            "output_cap": self.settings.output_cap,
            "prefault_pages": int(a.get("prefault_pages", 0)),  # 0: workers run the slower prewarm (or none)
        }
