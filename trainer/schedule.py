"""The retrain schedule: every X hours, or when M new labelled trajectories arrived.

Checked by the worker once a minute (an arq cron job). State in Redis, under the job prefix:
``P:schedule:last`` (time of the last timed retrain), ``P:schedule:cursor:trajectories`` and
``P:schedule:cursor:feedback`` (stream ids read so far), ``P:schedule:labels`` (labels counted
since the last label-triggered retrain). A label is a user trajectory logged with a gold
answer, or a trusted feedback record (from the solving caller or an admin) with a rating or a
corrected answer: votes from anyone else never trigger a retrain. The first check starts the
cursors at the streams' current ends: history from before the schedule existed does not count.
Nothing is enqueued while another retrain job is queued or running.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from agent.trajectory import Source, Trajectory
from agent.trajlog import Feedback
from trainer.jobs import EnqueueResult, enqueue_retrain, list_jobs
from trainer.recipe import RetrainRequest
from trainer.settings import TrainerSettings


class ScheduleDecision(BaseModel):
    new_labels: int
    labels_total: int
    enqueued: EnqueueResult | None = None
    reason: str = ""


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def _count(redis: Any, stream: str, cursor_key: str, is_label: Any) -> int:
    cursor = await redis.get(cursor_key)
    if cursor is None:  # first look: start at the end
        last = await redis.xrevrange(stream, "+", "-", count=1)
        await redis.set(cursor_key, _s(last[0][0]) if last else "0-0")
        return 0
    n = 0
    start = "(" + _s(cursor)
    while True:
        entries = await redis.xrange(stream, start, "+", count=500)
        for _, fields in entries:
            data = {_s(k): _s(v) for k, v in fields.items()}
            if "data" in data and is_label(data["data"]):
                n += 1
        if entries:
            start = "(" + _s(entries[-1][0])
            await redis.set(cursor_key, start[1:])
        if len(entries) < 500:
            return n


def _trajectory_label(raw: str) -> bool:
    t = Trajectory.model_validate_json(raw)
    return t.source is Source.api and t.gold is not None


def _feedback_label(raw: str) -> bool:
    f = Feedback.model_validate_json(raw)
    return f.trusted and (f.rating is not None or bool(f.corrected_answer and f.corrected_answer.strip()))


async def check_schedule(pool: Any, settings: TrainerSettings, now: float | None = None) -> ScheduleDecision:
    """Count new labels and enqueue a retrain when the schedule says so."""
    now = time.time() if now is None else now
    p = settings.job_prefix
    logp = settings.redis_prefix
    new = 0
    if settings.retrain_after_labels > 0:
        new += await _count(pool, f"{logp}:trajectories", f"{p}:schedule:cursor:trajectories", _trajectory_label)
        new += await _count(pool, f"{logp}:feedback", f"{p}:schedule:cursor:feedback", _feedback_label)
    total = int(await pool.incrby(f"{p}:schedule:labels", new)) if new else int(await pool.get(f"{p}:schedule:labels") or 0)
    busy = any(j.state in ("queued", "running") for j in await list_jobs(pool, prefix=p, limit=20))
    decision = ScheduleDecision(new_labels=new, labels_total=total)
    if busy:
        decision.reason = "a retrain job is queued or running"
        return decision
    key: str | None = None
    if settings.retrain_after_labels > 0 and total >= settings.retrain_after_labels:
        key, decision.reason = f"schedule-labels-{int(now)}", f"{total} new labels >= {settings.retrain_after_labels}"
        await pool.set(f"{p}:schedule:labels", 0)
    elif settings.retrain_every_h > 0:
        last = await pool.get(f"{p}:schedule:last")
        if last is None:
            await pool.set(f"{p}:schedule:last", str(now))
        elif now - float(_s(last)) >= settings.retrain_every_h * 3600:
            key, decision.reason = f"schedule-time-{int(now)}", f"{settings.retrain_every_h} h since the last timed retrain"
    if key is not None:
        if settings.retrain_every_h > 0:
            await pool.set(f"{p}:schedule:last", str(now))
        decision.enqueued = await enqueue_retrain(pool, RetrainRequest(), key, prefix=p,
                                                  queue_name=settings.queue_name, trigger="schedule")
    return decision
