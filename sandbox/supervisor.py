"""The supervisor: a pool of pre-forked single-use workers, stateful session workers, and every limit
that must hold from outside the worker (wall time, CPU time, memory, output; see ``cell``).

Stateless: a ready, already-isolated worker takes the code, the supervisor collects the result, then
kills the worker; sweeping its cgroup and forking a replacement happen in the background (off the
latency path). A memory limit the kernel refuses to apply (it cannot lower a group's limit below what the
group holds) is never run under: that slot is recycled and the call takes another worker.

Sessions: one worker per session keeps its globals between cells and is stopped (SIGSTOP, which no code
can catch) between them, so threads a cell left behind cannot compute outside a cell; whatever CPU they
used before the stop is charged to the next cell. If the worker dies, or is evicted because every session
slot is taken, the session keeps its successful cells: the next cell first replays them with their output
discarded and says so (``state_reset``). Only an idle session's worker is evicted (the least recently
used); when every slot runs a cell, a new session is refused with a clear error.

If the zygote itself dies, a watcher starts a new one (same instance, cgroups and uids) with backoff;
meanwhile executions wait for a worker, and every pool slot refills as soon as the zygote is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox import capabilities, cell, cgroups, rootfs
from sandbox.cell import CellRun, Limits
from sandbox.cgroups import LimitNotApplied, SlotCgroup
from sandbox.result import ExecResult, ExecStatus
from sandbox.settings import SandboxSettings
from sandbox.zygote_client import SandboxFailure, Worker, Zygote

log = logging.getLogger("sandbox.supervisor")


class SandboxUnavailable(RuntimeError):
    """Strict mode and a protection is missing on this host."""


@dataclass
class Session:
    id: str
    slot: int | None = None  # None: holds no worker slot (new, or evicted to make room)
    cg: SlotCgroup | None = None
    worker: Worker | None = None
    history: list[str] = field(default_factory=list)  # successful cells, replayed into a new worker
    cells_in_worker: int = 0  # cells the current worker ran (its state is more than the history)
    state_lost: bool = False  # the worker was evicted: the next cell must say so
    cpu_mark: int | None = None  # the slot's CPU counter when the last cell ended (stopped since)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


KNOWN_SESSIONS_PER_SLOT = 8  # sessions remembered (with their history) per session slot


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
        view = rootfs.view_paths(interp)
        if not h.mount_ns:
            self._fallback_dir = tempfile.mkdtemp(prefix="mathagent-sandbox-")
            os.chmod(self._fallback_dir, 0o1777)
        return {
            "instance": self.instance,
            "uid_base": self.uid_base,
            "protections": {
                "uid": h.uid,
                "mount_ns": h.mount_ns,
                "pid_ns": h.pid_ns,
                "ipc_ns": h.ipc_ns,
                "net_ns": h.net_ns,
                "landlock": h.landlock,
                "seccomp": h.seccomp,
                "cgroups": self.use_cgroups,
            },
            "view": view,
            "read_only": rootfs.read_only_paths(view) if h.mount_ns else capabilities.SYSTEM_READ_ONLY + interp,
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
            w.sched_ready_ns = cell.sched_ns(w.pid)
            self._ready.put_nowait(w)
            return

    async def _recycle(self, w: Worker, session_slot: bool = False) -> None:
        """Kill everything in the slot, wait for the worker to be reaped, then fork its replacement (a pool
        slot whose memory limit is unknown, because the kernel refused one, first gets the default limit
        back: until then it stays out of the pool)."""
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
            if cg is not None:
                await self._restore_limit(cg, w.slot)
            await self._refill(w.slot)

    async def _restore_limit(self, cg: SlotCgroup, slot: int) -> None:
        delay = 0.05
        while not self.closed and cg.memory_mb is None:
            try:
                cg.set_memory(self.settings.memory_mb)
            except LimitNotApplied as e:
                log.warning("slot %d stays out of the pool until its memory limit can be set: %s", slot, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                cg.sweep()

    # ---- limits ---------------------------------------------------------------------------

    def _limits(self, timeout_s: float | None, memory_mb: int | None) -> Limits:
        s = self.settings
        t = min(float(timeout_s) if timeout_s else s.timeout_s, s.max_timeout_s)
        m = min(int(memory_mb) if memory_mb else s.memory_mb, s.max_memory_mb)
        return Limits(t, min(s.cpu_s or t, t) if s.cpu_s else t, max(m, 32))

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
        except Exception as e:  # a bug of ours: still one typed result, never a traceback to the caller
            log.exception("unexpected sandbox failure")
            return ExecResult(status=ExecStatus.sandbox_error, detail=f"sandbox failure: {type(e).__name__}"[:300],
                              session_id=session_id)

    async def _run(self, w: Worker, code: str, lim: Limits, cpu_from: int | None = None) -> CellRun:
        return await cell.run(w, code, lim, self._cgroups.get(w.slot), output_cap=self.settings.output_cap,
                              kill_factor=self.settings.output_kill_factor, cpu_from=cpu_from)

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

    # A slot that refuses the limit is recycled and the call moves to another worker; when a second slot
    # refuses too, the limit is below what any worker needs (or every slot holds leaked memory).
    LIMIT_ATTEMPTS = 2

    async def _execute_stateless(self, code: str, limits: Limits) -> ExecResult:
        refused: LimitNotApplied | None = None
        for _ in range(self.LIMIT_ATTEMPTS):
            w = await self._take_ready()
            self._busy[w.slot] = w
            try:
                cg = self._cgroups.get(w.slot)
                if cg is not None:
                    cg.set_memory(limits.memory_mb)
                return (await self._run(w, code, limits)).result
            except LimitNotApplied as e:
                log.warning("slot %d refused a memory limit; recycling it: %s", w.slot, e)
                refused = e
            finally:
                w.kill()
                self._bg(self._recycle(w))
        return _limit_refused(refused, None)

    # ---- sessions -------------------------------------------------------------------------

    @property
    def max_known_sessions(self) -> int:
        return KNOWN_SESSIONS_PER_SLOT * self.settings.max_sessions

    def live_sessions(self) -> int:
        return sum(1 for s in self._sessions.values() if s.slot is not None)

    async def _claim_session_slot(self) -> int | None:
        """A free session slot, or the slot of the least recently used idle session (whose worker is
        evicted: the session keeps its history and replays it on its next cell); None when all are busy."""
        if self._free_session_slots:
            return self._free_session_slots.pop()
        idle = [v for v in self._sessions.values() if v.slot is not None and not v.lock.locked()]
        if not idle:
            return None
        victim = min(idle, key=lambda v: v.last_used)
        async with victim.lock:  # not locked: acquired without yielding
            log.info("evicting the worker of idle session %s to make room", victim.id)
            await self._release_slot(victim)
        return self._free_session_slots.pop() if self._free_session_slots else None

    async def _release_slot(self, s: Session) -> None:
        """Give up the session's worker and slot (the caller holds its lock); its history stays."""
        if s.worker is not None:
            w, s.worker = s.worker, None
            s.state_lost = s.state_lost or s.cells_in_worker > 0
            await self._recycle(w, session_slot=True)
        elif s.cg is not None:
            s.cg.sweep()
        s.cells_in_worker = 0
        s.cpu_mark = None
        if s.slot is not None:
            self._free_session_slots.append(s.slot)
        s.slot, s.cg = None, None

    async def _drop_session(self, s: Session) -> None:
        if self._sessions.get(s.id) is s:
            del self._sessions[s.id]
        s.closed = True
        await self._release_slot(s)

    async def close_session(self, session_id: str) -> bool:
        s = self._sessions.get(session_id)
        if s is None:
            return False
        if s.worker is not None:
            s.worker.kill()
        async with s.lock:
            await self._drop_session(s)
        return True

    async def _session_cell(self, s: Session, code: str, limits: Limits) -> CellRun:
        """One cell in the session's (stopped) worker: continue it, run, stop it again. Raises
        LimitNotApplied, before anything runs, when the slot cannot take the cell's memory limit."""
        assert s.worker is not None
        if s.cg is not None:
            s.cg.set_memory(limits.memory_mb)
        s.worker.resume()
        run = await self._run(s.worker, code, limits, cpu_from=s.cpu_mark)
        s.cells_in_worker += 1
        if run.alive:
            s.worker.pause()
            s.cpu_mark = run.cpu_ns_end if s.cg is not None else None
        return run

    async def _lose_worker(self, s: Session) -> None:
        if s.worker is not None:
            old, s.worker = s.worker, None
            await self._recycle(old, session_slot=True)
        s.cells_in_worker = 0
        s.cpu_mark = None

    async def _execute_session(self, session_id: str, code: str, limits: Limits) -> ExecResult:
        s = self._sessions.get(session_id)
        if s is None:
            if len(self._sessions) >= self.max_known_sessions:
                return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                                  detail=f"too many sessions ({len(self._sessions)}); close the sessions you no "
                                         "longer need")
            s = self._sessions[session_id] = Session(session_id)
        async with s.lock:
            if s.closed:
                return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id, detail="session was closed")
            s.last_used = time.monotonic()
            if s.slot is None:
                slot = await self._claim_session_slot()
                if slot is None:
                    if not s.history and not s.state_lost and self._sessions.get(session_id) is s:
                        del self._sessions[session_id]  # nothing to remember
                        s.closed = True
                    return ExecResult(status=ExecStatus.sandbox_error, session_id=session_id,
                                      detail=f"too many live sessions ({self.settings.max_sessions}), all running "
                                             "a cell; retry later")
                s.slot, s.cg = slot, self._cgroups.get(slot)
            try:
                return await self._session_cells(s, code, limits)
            except LimitNotApplied as e:
                return _limit_refused(e, session_id)

    async def _session_cells(self, s: Session, code: str, limits: Limits) -> ExecResult:
        assert s.slot is not None
        replayed = 0
        evicted = s.state_lost
        if s.worker is None or s.worker.exit.done():
            history = s.history
            try:
                while True:
                    await self._lose_worker(s)
                    s.worker = await self._spawn(s.slot, persistent=True)
                    kept: list[str] = []
                    died = False
                    for past in history:
                        run = await self._session_cell(s, past, limits)
                        if not run.alive:
                            died = True
                            break
                        if run.result.status in (ExecStatus.ok, ExecStatus.output_truncated):
                            kept.append(past)
                    if not died:
                        break
                    # A replayed cell killed the worker: drop it and the cells after it, replay the rest
                    # into a fresh worker (the history shrinks on every round).
                    history = kept
            except LimitNotApplied:
                await self._lose_worker(s)  # half replayed: the next cell starts over
                raise
            replayed = len(kept)
            s.history = kept
        run = await self._session_cell(s, code, limits)
        result = run.result
        result.session_id = s.id
        s.last_used = time.monotonic()
        notes: list[str] = []
        if evicted or replayed:
            why = ("its worker had been evicted to make room for other sessions" if evicted
                   else "its worker had been lost")
            notes.append(f"The session's state was rebuilt before this cell ({why}): its {replayed} earlier "
                         "successful cell(s) were replayed with their output discarded.")
            result.state_reset = True
            s.state_lost = False
        if not run.alive:
            await self._lose_worker(s)
            result.state_reset = True
            notes.append(f"The session worker was lost, so all session state was reset; before the next cell the "
                         f"{len(s.history)} earlier successful cell(s) will be replayed with their output discarded.")
        elif result.status in (ExecStatus.ok, ExecStatus.output_truncated):
            s.history.append(code)
        if notes:
            result.detail = " ".join([result.detail, *notes] if result.detail else notes)
        return result

    async def _evict_loop(self) -> None:
        ttl = self.settings.session_ttl_s
        while True:
            await asyncio.sleep(min(1.0, ttl / 4))
            now = time.monotonic()
            for s in list(self._sessions.values()):
                if not s.lock.locked() and now - s.last_used > ttl:
                    log.info("expiring idle session %s", s.id)
                    async with s.lock:
                        await self._drop_session(s)

    # ---- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        a = self.applied
        protections = {
            "uid_per_slot": "uid" in a,
            "net_namespace": bool(a.get("net_ns")),
            "net_namespace_per_slot": bool(a.get("slot_netns")),
            "mount_namespace": bool(a.get("mount_ns")),
            "minimal_root": bool(a.get("rootfs")),
            "pid_namespace": bool(a.get("pid_ns")),
            "ipc_namespace_per_worker": bool(a.get("ipc_ns_per_worker")),
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
            "sessions": self.live_sessions(),  # holding a worker slot
            "sessions_known": len(self._sessions),  # also those evicted to make room (their history kept)
            "sessions_running": sum(1 for s in self._sessions.values() if s.lock.locked()),
            "max_sessions": self.settings.max_sessions,
            "uid_range": [self.uid_base, self.uid_base + self.n_slots],
            "worker_pids": sorted(pids),
            "zygote_pid": self.zygote.proc.pid if self.zygote and self.zygote.proc else None,
            "output_cap": self.settings.output_cap,
            "prefault_pages": int(a.get("prefault_pages", 0)),  # 0: workers run the slower prewarm (or none)
        }


def _limit_refused(e: LimitNotApplied | None, session_id: str | None) -> ExecResult:
    """The kernel would not apply the memory limit asked for: the cell did not run (never under a weaker
    limit). In a session that means the session already holds more than the limit."""
    held = "the session already holds" if session_id is not None else "a fresh worker's slot holds"
    usage = f"{e.usage_mb:.0f} MiB" if e is not None else "more"
    asked = e.memory_mb if e is not None else 0
    return ExecResult(status=ExecStatus.memory_limit, session_id=session_id,
                      detail=f"the cell was not run: its memory limit of {asked} MiB could not be applied "
                             f"({held} {usage})")
