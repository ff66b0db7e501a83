"""Retrain jobs: the records in Redis that say what a job is doing, and enqueueing with an
idempotency key. The worker (:mod:`trainer.worker`) writes them; the gateway reads them.

Keys (``P`` = ``<MATHAGENT_REDIS_PREFIX>:trainer``)::

    P:job:<id>    JSON of :class:`JobRecord` (request, state, progress, outcome, error)
    P:jobs        sorted set of job ids by creation time

The arq job carries only the job id; the request lives in the record, so a record is the one
source of truth and a lost arq entry can always be re-enqueued from it. The idempotency key
maps to the job id (``retrain-<sha256(key)[:24]>``) and the record is created with SET NX:
enqueueing twice with one key returns the first job and runs it once, for as long as the
record exists (records are kept; nothing expires them).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from arq.constants import default_queue_name
from pydantic import BaseModel, Field

from agent.trajlog import REDIS_PREFIX
from trainer.progress import Progress
from trainer.recipe import RetrainRequest

if TYPE_CHECKING:
    from arq.connections import ArqRedis



def jobs_prefix(redis_prefix: str) -> str:
    """Where job records live: ``<redis prefix>:trainer`` (``:job:<id>``, ``:jobs``, ...)."""
    return f"{redis_prefix}:trainer"


DEFAULT_PREFIX = jobs_prefix(REDIS_PREFIX)  # where jobs live with the default MATHAGENT_REDIS_PREFIX
DEFAULT_QUEUE = default_queue_name
RETRAIN_FUNCTION = "retrain"

JobState = Literal["queued", "running", "succeeded", "rejected", "no_pairs", "failed"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "rejected", "no_pairs", "failed"})


class Rejection(BaseModel):
    """Why the eval gate refused a candidate (the candidate was not published): the numbers of
    its paired test (:mod:`trainer.gate`)."""

    iteration: int
    current_version: str
    accuracy_current: float
    accuracy_candidate: float
    tolerance: float
    n: int
    reason: str
    wins: int = Field(0, description="held-out problems only the candidate solved")
    losses: int = Field(0, description="held-out problems only the current version solved")
    lower_bound: float | None = Field(None, description="the paired lower bound of candidate - current accuracy")
    alpha: float | None = None
    min_problems: int | None = None


class JobRecord(BaseModel):
    id: str
    kind: Literal["retrain"] = "retrain"
    state: JobState = "queued"
    trigger: str = Field("api", description="api, schedule or cli")
    idempotency_key: str | None = None
    request: RetrainRequest
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = Field(0, description="how many times a worker started it (a killed worker's job restarts)")
    worker: str | None = Field(None, description="host|pid|id of the worker running it")
    heartbeat_at: float | None = None
    run_dir: str | None = None
    progress: Progress = Field(default_factory=Progress)
    versions: list[str] = Field(default_factory=list, description="versions published and deployed by this job")
    rejection: Rejection | None = None
    outcome: dict[str, Any] | None = Field(None, description="trainer.iterate.RunOutcome when finished")
    error: str | None = None


class UnreadableJob(BaseModel):
    """A stored job record that does not parse (written by another version, or damaged): listed
    as what it is, never an error for the reader."""

    id: str
    kind: Literal["retrain"] = "retrain"
    state: Literal["unreadable"] = "unreadable"
    error: str = Field(description="why the stored record could not be read")


class UnreadableJobError(RuntimeError):
    """The record an idempotency key points at cannot be read (use another key)."""


class EnqueueResult(BaseModel):
    job: JobRecord
    created: bool = Field(description="False: a job with this idempotency key existed; it is returned")


def job_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:job:{job_id}"


def index_key(prefix: str) -> str:
    return f"{prefix}:jobs"


def job_id_for(idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return f"retrain-{uuid.uuid4().hex[:24]}"
    if not idempotency_key or len(idempotency_key) > 128:
        raise ValueError("idempotency_key must be 1 to 128 characters")
    return f"retrain-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]}"


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def connect(redis_url: str) -> ArqRedis:
    """An arq pool (a ``redis.asyncio.Redis`` that can also enqueue) for ``redis_url``."""
    from arq.connections import RedisSettings, create_pool

    return await create_pool(RedisSettings.from_dsn(redis_url))


def parse_job(job_id: str, raw: str) -> JobRecord | UnreadableJob:
    """A stored record as a :class:`JobRecord`, or an :class:`UnreadableJob` saying why not."""
    try:
        return JobRecord.model_validate_json(raw)
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") and exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        why = f"{where}: {first.get('msg', 'invalid')}" if first else type(exc).__name__
        return UnreadableJob(id=job_id, error=f"the stored record does not parse ({why})"[:500])


async def read_job(redis: Any, job_id: str, *, prefix: str = DEFAULT_PREFIX) -> JobRecord | UnreadableJob | None:
    """The job's record (or why it cannot be read), or None. ``redis``: any redis.asyncio client."""
    raw = _text(await redis.get(job_key(prefix, job_id)))
    return parse_job(job_id, raw) if raw is not None else None


async def get_job(redis: Any, job_id: str, *, prefix: str = DEFAULT_PREFIX) -> JobRecord | None:
    """The job's record; None when there is none or it cannot be read (the worker cannot run it)."""
    record = await read_job(redis, job_id, prefix=prefix)
    return record if isinstance(record, JobRecord) else None


async def read_jobs(redis: Any, *, prefix: str = DEFAULT_PREFIX, limit: int = 50) -> list[JobRecord | UnreadableJob]:
    """The newest ``limit`` jobs, newest first; a record that does not parse is listed as unreadable."""
    ids = [str(_text(i)) for i in await redis.zrevrange(index_key(prefix), 0, max(0, limit - 1))]
    if not ids:
        return []
    raws = await redis.mget([job_key(prefix, i) for i in ids])
    return [parse_job(i, t) for i, r in zip(ids, raws, strict=True) if (t := _text(r)) is not None]


async def list_jobs(redis: Any, *, prefix: str = DEFAULT_PREFIX, limit: int = 50) -> list[JobRecord]:
    """The newest ``limit`` readable jobs, newest first."""
    return [r for r in await read_jobs(redis, prefix=prefix, limit=limit) if isinstance(r, JobRecord)]


async def save_job(redis: Any, record: JobRecord, *, prefix: str = DEFAULT_PREFIX) -> None:
    await redis.set(job_key(prefix, record.id), record.model_dump_json())


async def enqueue_retrain(
    pool: ArqRedis,
    request: RetrainRequest | None = None,
    idempotency_key: str | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    queue_name: str = DEFAULT_QUEUE,
    trigger: str = "api",
) -> EnqueueResult:
    """Create the job's record (once per idempotency key) and put it on the arq queue.

    A second call with the same key returns the existing record (``created=False``); if that job
    is still queued, it is put on the queue again in case the first call died between the two
    writes (arq refuses a job id it already holds, so this never duplicates it).
    """
    request = request or RetrainRequest()
    job_id = job_id_for(idempotency_key)
    record = JobRecord(id=job_id, request=request, idempotency_key=idempotency_key, trigger=trigger)
    created = bool(await pool.set(job_key(prefix, job_id), record.model_dump_json(), nx=True))
    if not created:
        existing = await read_job(pool, job_id, prefix=prefix)
        if existing is None:  # deleted between the two calls: try once more
            return await enqueue_retrain(pool, request, idempotency_key, prefix=prefix, queue_name=queue_name,
                                         trigger=trigger)
        if isinstance(existing, UnreadableJob):
            raise UnreadableJobError(f"the job of this idempotency key ({job_id}) is unreadable: {existing.error}")
        record = existing
    await pool.zadd(index_key(prefix), {job_id: record.created_at}, nx=True)
    if record.state == "queued":
        await pool.enqueue_job(RETRAIN_FUNCTION, job_id, _job_id=job_id, _queue_name=queue_name)
    return EnqueueResult(job=record, created=created)


class JobWriter:
    """The worker's handle on one job's record: every change goes through one lock and writes
    the whole record, so progress and heartbeat updates never overwrite each other."""

    def __init__(self, redis: Any, record: JobRecord, *, prefix: str) -> None:
        self.redis = redis
        self.record = record
        self.prefix = prefix
        self._lock = asyncio.Lock()

    async def update(self, **fields: Any) -> JobRecord:
        async with self._lock:
            self.record = self.record.model_copy(update=fields)
            await save_job(self.redis, self.record, prefix=self.prefix)
            return self.record

    async def progress(self, progress: Progress) -> None:
        await self.update(progress=progress, heartbeat_at=time.time())
