"""The trajectory log: a Redis stream that loses nothing.

Layout (``P`` = the key prefix, ``mathagent`` by default):

- ``P:trajectories``        stream, one entry per finished trajectory (fields ``id``, ``data``); no
                            trimming unless ``maxlen`` is set.
- ``P:trajectories:index``  hash trajectory id -> stream entry id (lookup by id).
- ``P:feedback``            stream of feedback records (every post, in order: what the trainer reads);
                            ``P:feedback:by-caller:<trajectory id>`` a hash caller -> that caller's
                            latest record (what a trajectory shows; one rating per caller, latest
                            wins, at most ``cap`` callers per trajectory: the append refuses more).
- ``P:dedupe:<key>``        one key per written record: the append is a Lua script that writes the
                            record only if its dedupe key is new, so replaying a record whose
                            first write did reach Redis (reply lost) never duplicates it.

When Redis is unreachable, records go to an fsync'd spool directory (one file per record,
written to a temporary name, fsync'd, renamed, directory fsync'd) and are replayed in order
when Redis answers again. While the spool is not empty, new records also go to the spool, so
the stream keeps the order in which records were appended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent.trajectory import Trajectory

log = logging.getLogger(__name__)

REDIS_PREFIX = "mathagent"  # the default key prefix (MATHAGENT_REDIS_PREFIX)

DEDUPE_TTL_S = 30 * 24 * 3600
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: stream, dedupe key, index hash ("" = none), list to push the record onto ("" = none);
# ARGV: ttl, maxlen (0 = none), index field, then the entry's field/value pairs, the record's JSON last.
_APPEND_LUA = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  local entry
  if tonumber(ARGV[2]) > 0 then
    entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
  else
    entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
  end
  if KEYS[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[3], entry) end
  if KEYS[4] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[#ARGV]) end
  return entry
end
return false
"""

# KEYS: stream, dedupe key, the trajectory's by-caller hash; ARGV: ttl, cap (0 = none), caller, then
# the entry's field/value pairs, the record's JSON last. Returns 0 when a new caller would exceed the cap.
_FEEDBACK_LUA = """
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('HEXISTS', KEYS[3], ARGV[3]) == 0 and redis.call('HLEN', KEYS[3]) >= cap then
  return 0
end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  local entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[#ARGV])
  return entry
end
return false
"""
LEGACY_FEEDBACK_SHOWN = 50  # records of a pre-by-caller feedback list a reader still sees (the newest)


class TrajectorySink(Protocol):
    """What the solver needs: somewhere to append finished trajectories."""

    async def append(self, traj: Trajectory) -> None: ...


class Feedback(BaseModel):
    """A user's verdict on a trajectory. Only a *trusted* one (from the caller who solved it, or
    an admin: the gateway decides) becomes a label for the trainer; any other is a vote."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    trajectory_id: str
    rating: Literal["up", "down"] | None = None
    corrected_answer: str | None = None
    comment: str | None = Field(None, max_length=4000)
    created_at: float = Field(default_factory=time.time)
    caller: str | None = Field(None, description="opaque id of who sent it: one record per caller and trajectory "
                               "counts (the latest); None: every record is its own caller")
    trusted: bool = Field(False, description="from the solving caller (its feedback token) or an admin")

    @property
    def caller_key(self) -> str:
        return self.caller or f"anon:{self.id}"


FeedbackWrite = Literal["stored", "spooled", "over_cap"]


class SpoolRecord(BaseModel):
    kind: Literal["trajectory", "feedback"]
    dedupe: str
    payload: str  # the record's JSON
    cap: int = 0  # feedback: distinct callers per trajectory at most (0 = none)


class LoggedTrajectory(BaseModel):
    entry_id: str
    trajectory: Trajectory


class TrajectoryLog:
    """Append trajectories and feedback to Redis streams, spooling to disk while Redis is down."""

    def __init__(
        self,
        redis_url: str,
        spool_dir: Path,
        *,
        prefix: str = REDIS_PREFIX,
        maxlen: int | None = None,
        retry_interval_s: float = 1.0,
    ) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}:trajectories"
        self.index = f"{prefix}:trajectories:index"
        self.feedback_stream = f"{prefix}:feedback"
        self.maxlen = maxlen
        self.spool_dir = Path(spool_dir).expanduser() / prefix.replace(":", "_").replace("/", "_")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.retry_interval_s = retry_interval_s
        self.redis = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=1.0, socket_timeout=5.0, decode_responses=True
        )
        self._script = self.redis.register_script(_APPEND_LUA)
        self._feedback_script = self.redis.register_script(_FEEDBACK_LUA)
        self._lock = asyncio.Lock()
        self._next_retry = 0.0
        self._seq = 0

    # ------------------------------------------------------------------ writing

    async def append(self, traj: Trajectory) -> None:
        """Append one finished trajectory (never raises because Redis is down)."""
        await self._write(SpoolRecord(kind="trajectory", dedupe=f"t:{traj.id}", payload=traj.model_dump_json()))

    async def add_feedback(self, feedback: Feedback, *, cap: int = 0) -> FeedbackWrite:
        """Append one feedback record; it replaces its caller's earlier one on the trajectory.
        ``cap`` > 0: refused (``over_cap``) when it would be the trajectory's ``cap + 1``-th caller
        (a record spooled while Redis is down is checked when it is replayed, and dropped then)."""
        rec = SpoolRecord(kind="feedback", dedupe=f"f:{feedback.id}", payload=feedback.model_dump_json(), cap=cap)
        return await self._write(rec)

    async def _write(self, rec: SpoolRecord) -> FeedbackWrite:
        async with self._lock:
            if self.spooled() and not await self._replay_locked():
                self._spool(rec)
                return "spooled"
            try:
                return await self._send(rec)
            except _UNAVAILABLE as exc:
                log.warning("redis unreachable (%s); spooling %s", type(exc).__name__, rec.dedupe)
                self._next_retry = time.monotonic() + self.retry_interval_s
                self._spool(rec)
                return "spooled"

    def feedback_key(self, trajectory_id: str) -> str:
        """The hash of one trajectory's latest feedback per caller."""
        return f"{self.feedback_stream}:by-caller:{trajectory_id}"

    async def _send(self, rec: SpoolRecord) -> FeedbackWrite:
        dedupe_key = f"{self.prefix}:dedupe:{rec.dedupe}"
        ttl, maxlen = str(DEDUPE_TTL_S), str(self.maxlen or 0)
        if rec.kind == "trajectory":
            tid = json.loads(rec.payload)["id"]
            await self._script(
                keys=[self.stream, dedupe_key, self.index, ""], args=[ttl, maxlen, tid, "id", tid, "data", rec.payload]
            )
            return "stored"
        fb = Feedback.model_validate_json(rec.payload)
        result = await self._feedback_script(
            keys=[self.feedback_stream, dedupe_key, self.feedback_key(fb.trajectory_id)],
            args=[ttl, str(rec.cap), fb.caller_key, "trajectory_id", fb.trajectory_id, "data", rec.payload],
        )
        return "over_cap" if result == 0 else "stored"

    # ------------------------------------------------------------------ spool

    def _spool(self, rec: SpoolRecord) -> None:
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:08d}.json"
        tmp = self.spool_dir / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(rec.model_dump_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.spool_dir / name)
        dfd = os.open(self.spool_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def spooled(self) -> list[Path]:
        """Spooled records, oldest first."""
        return sorted(p for p in self.spool_dir.glob("*.json") if not p.name.startswith("."))

    async def flush(self, *, force: bool = True) -> bool:
        """Replay the spool into Redis in order; True when the spool is empty afterwards."""
        async with self._lock:
            if force:
                self._next_retry = 0.0
            return await self._replay_locked()

    async def _replay_locked(self) -> bool:
        if time.monotonic() < self._next_retry:
            return False
        for path in self.spooled():
            try:
                rec = SpoolRecord.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:  # a damaged file is kept aside, never silently dropped
                log.error("unreadable spool record %s: %s", path, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            try:
                if await self._send(rec) == "over_cap":
                    log.warning("spooled feedback %s dropped: its trajectory has feedback from %d callers", rec.dedupe,
                                rec.cap)
            except _UNAVAILABLE:
                self._next_retry = time.monotonic() + self.retry_interval_s
                return False
            path.unlink()
        return True

    async def run_replayer(self, interval_s: float = 2.0) -> None:
        """Background task: keep replaying the spool (a long-running service runs this)."""
        while True:
            if self.spooled():
                await self.flush(force=False)
            await asyncio.sleep(interval_s)

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _parse(entries: list[Any]) -> list[LoggedTrajectory]:
        return [
            LoggedTrajectory(entry_id=eid, trajectory=Trajectory.model_validate_json(fields["data"]))
            for eid, fields in entries
        ]

    async def read_range(self, start: str = "-", end: str = "+", count: int | None = None) -> list[LoggedTrajectory]:
        """Trajectories with stream entry ids in [start, end] (inclusive; "(" prefix for exclusive)."""
        return self._parse(await self.redis.xrange(self.stream, start, end, count=count))

    async def get(self, trajectory_id: str) -> Trajectory | None:
        entry = await self.redis.hget(self.index, trajectory_id)
        if entry is None:
            return None
        found = await self.redis.xrange(self.stream, entry, entry)
        return self._parse(found)[0].trajectory if found else None

    async def length(self) -> int:
        return int(await self.redis.xlen(self.stream))

    async def ensure_group(self, group: str, start: str = "0") -> None:
        """Create a consumer group (idempotent); ``start="0"`` delivers the whole history."""
        try:
            await self.redis.xgroup_create(self.stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_group(
        self, group: str, consumer: str, *, count: int = 100, block_ms: int | None = None
    ) -> list[LoggedTrajectory]:
        """New entries for this consumer (acknowledge them with :meth:`ack` once processed)."""
        resp = await self.redis.xreadgroup(group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return [e for _, entries in resp or [] for e in self._parse(entries)]

    async def ack(self, group: str, *entry_ids: str) -> int:
        return int(await self.redis.xack(self.stream, group, *entry_ids)) if entry_ids else 0

    async def feedback(self, trajectory_id: str) -> list[Feedback]:
        """The trajectory's feedback: each caller's latest record, oldest first (plus the newest
        records of a list written before feedback was kept per caller)."""
        raw = list(await self.redis.hvals(self.feedback_key(trajectory_id)))
        raw += await self.redis.lrange(f"{self.feedback_stream}:{trajectory_id}", -LEGACY_FEEDBACK_SHOWN, -1)
        return sorted((Feedback.model_validate_json(r) for r in raw), key=lambda f: f.created_at)

    async def aclose(self) -> None:
        await self.redis.aclose()
