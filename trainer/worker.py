"""The trainer worker: an arq worker that runs retrain jobs one at a time (``max_jobs=1``).

``python -m trainer worker`` runs it with :class:`trainer.settings.TrainerSettings`. The job
function reads its request from the job record (:mod:`trainer.jobs`), runs the iteration driver
(:mod:`trainer.iterate`) in ``<runs_dir>/<job id>`` and writes progress, heartbeat and the
outcome into the record. The worker refreshes arq's health-check key (``<queue>:health-check``,
read by the gateway's /healthz) every 30 s.

A killed worker: arq keeps the job's in-progress marker for the whole job timeout, so on start
(and once a minute) the worker looks for running jobs whose worker is gone (same host and its
process no longer exists, or no heartbeat for ``stale_after_s``), clears the marker and puts
the job back on the queue; the driver then resumes the run directory from its last finished
step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any

from trainer.jobs import (
    FINAL_STATES,
    RETRAIN_FUNCTION,
    JobRecord,
    JobWriter,
    Rejection,
    list_jobs,
    read_job,
    save_job,
)
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 30
KEEP_RESULT_S = 7 * 24 * 3600


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_gone(record: JobRecord, settings: TrainerSettings, me: str, now: float) -> bool:
    """Whether the worker that ran ``record`` is gone (so the job must be resumed)."""
    if record.worker == me:
        return False
    if record.worker:
        host, _, rest = record.worker.partition("|")
        pid = rest.partition("|")[0]
        if host == _host() and pid.isdigit() and not _pid_alive(int(pid)):
            return True
    beat = record.heartbeat_at or record.started_at or record.created_at
    return now - beat > settings.stale_after_s


async def recover_stale(redis: Any, settings: TrainerSettings, me: str) -> list[str]:
    """Put the jobs of dead workers back on the queue; returns their ids."""
    from arq.constants import in_progress_key_prefix, job_key_prefix

    now = time.time()
    recovered = []
    for rec in await list_jobs(redis, prefix=settings.job_prefix, limit=200):
        if rec.state in FINAL_STATES:
            continue
        marker = in_progress_key_prefix + rec.id
        if rec.state == "queued" and not (await redis.exists(marker) and now - rec.created_at > settings.stale_after_s):
            continue
        if rec.state == "running" and not worker_gone(rec, settings, me, now):
            continue
        await redis.delete(marker)
        if not await redis.exists(job_key_prefix + rec.id) or await redis.zscore(settings.queue_name, rec.id) is None:
            await redis.delete(job_key_prefix + rec.id)
            await redis.enqueue_job(RETRAIN_FUNCTION, rec.id, _job_id=rec.id, _queue_name=settings.queue_name)
        rec.state = "queued"
        rec.progress = rec.progress.model_copy(update={"message": f"worker {rec.worker} lost; resuming"})
        await save_job(redis, rec, prefix=settings.job_prefix)
        recovered.append(rec.id)
        log.warning("job %s: its worker %s is gone; back on the queue", rec.id, rec.worker)
    return recovered


async def retrain(ctx: dict[str, Any], job_id: str) -> str:
    """The arq job: run (or resume) the retrain run of ``job_id``; returns the final state."""
    from trainer.iterate import run_iterations
    from trainer.recipe import resolve_recipe

    settings: TrainerSettings = ctx["settings"]
    redis = ctx["redis"]
    prefix = settings.job_prefix
    record = await read_job(redis, job_id, prefix=prefix)
    if not isinstance(record, JobRecord):
        log.error("job %s: %s under %s; nothing to do", job_id,
                  record.error if record is not None else "no record", prefix)
        return "failed"
    if record.state in FINAL_STATES:
        return record.state
    run_dir = settings.runs_path / job_id
    now = time.time()
    writer = JobWriter(redis, record, prefix=prefix)
    await writer.update(state="running", started_at=record.started_at or now, attempts=record.attempts + 1,
                        worker=ctx["worker_id"], heartbeat_at=now, run_dir=str(run_dir), error=None)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(settings.heartbeat_s)
            await writer.update(heartbeat_at=time.time())

    beat = asyncio.create_task(heartbeat())
    try:
        recipe = resolve_recipe(settings, record.request)
        outcome = await run_iterations(settings, recipe, run_dir, run_id=job_id, progress=writer.progress)
    except asyncio.CancelledError:
        raise  # shutdown or timeout: arq retries the job; the run directory resumes
    except Exception as exc:
        log.exception("job %s failed", job_id)
        await writer.update(state="failed", error=f"{type(exc).__name__}: {exc}"[:4000], finished_at=time.time())
        return "failed"
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    rejection = None
    last = outcome.iterations[-1] if outcome.iterations else None
    if outcome.status == "rejected" and last is not None and last.gate is not None:
        g = last.gate
        rejection = Rejection(iteration=last.iteration, **g.model_dump(include=set(Rejection.model_fields)))
    await writer.update(state=outcome.status, finished_at=time.time(), outcome=outcome.model_dump(mode="json"),
                        rejection=rejection, versions=[it.version for it in outcome.iterations if it.version])
    return outcome.status


async def schedule_tick(ctx: dict[str, Any]) -> str:
    """Once a minute: resume jobs of dead workers; enqueue a retrain when the schedule says so."""
    from trainer.schedule import check_schedule

    settings: TrainerSettings = ctx["settings"]
    await recover_stale(ctx["redis"], settings, ctx["worker_id"])
    decision = await check_schedule(ctx["redis"], settings)
    if decision.enqueued is not None and decision.enqueued.created:
        log.info("schedule: enqueued %s (%s)", decision.enqueued.job.id, decision.reason)
    return decision.reason


async def startup(ctx: dict[str, Any]) -> None:
    settings: TrainerSettings = ctx["settings"]
    ctx["worker_id"] = f"{_host()}|{os.getpid()}|{uuid.uuid4().hex[:8]}"
    recovered = await recover_stale(ctx["redis"], settings, ctx["worker_id"])
    log.info("trainer worker %s on queue %s; resumed %d job(s)", ctx["worker_id"], settings.queue_name, len(recovered))


def worker_options(settings: TrainerSettings) -> dict[str, Any]:
    """Keyword arguments of ``arq.worker.Worker`` (what arq calls WorkerSettings)."""
    from arq import cron, func
    from arq.connections import RedisSettings

    timeout_s = settings.job_timeout_h * 3600
    cron_jobs = []
    if settings.retrain_every_h > 0 or settings.retrain_after_labels > 0:
        cron_jobs.append(cron(schedule_tick, name="trainer-schedule", second=0, job_id="trainer-schedule",
                              timeout=120, run_at_startup=True))
    return dict(
        functions=[func(retrain, name=RETRAIN_FUNCTION, timeout=timeout_s, max_tries=settings.job_max_tries,
                        keep_result=KEEP_RESULT_S)],
        cron_jobs=cron_jobs,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        queue_name=settings.queue_name,
        max_jobs=1,
        job_timeout=timeout_s,
        health_check_interval=HEALTH_CHECK_S,
        on_startup=startup,
        ctx={"settings": settings},
        poll_delay=0.5,
        retry_jobs=True,
    )


def run_worker() -> int:
    from arq.worker import Worker

    from agent.configuration import load

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load(TrainerSettings)
    Worker(**worker_options(settings)).run()
    return 0
