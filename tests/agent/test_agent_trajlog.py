"""The Redis trajectory log against a private redis-server: reads, consumer groups, feedback, and
the spool (Redis killed mid-run and restarted: every record arrives exactly once, in order)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from agent.trajectory import Trajectory
from agent.trajlog import Feedback, SpoolRecord, TrajectoryLog

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def traj(i: int) -> Trajectory:
    return Trajectory(problem=f"problem {i}", problem_id=str(i), answer=str(i))


async def test_redis_killed_mid_run_every_record_arrives_once_in_order(private_redis, tmp_path):
    log = TrajectoryLog(private_redis.url, tmp_path / "spool", prefix="t", retry_interval_s=0.0)
    sent = [traj(i) for i in range(30)]
    for t in sent[:10]:
        await log.append(t)
    assert await log.length() == 10 and not log.spooled()

    private_redis.kill()
    for t in sent[10:20]:
        await log.append(t)  # never raises: spooled
    await log.add_feedback(Feedback(trajectory_id=sent[12].id, rating="down", corrected_answer="12"))
    assert len(log.spooled()) == 11
    assert not await log.flush()  # still down: nothing replayed, nothing lost

    private_redis.start()  # same port, same append-only file
    for t in sent[20:30]:
        await log.append(t)  # the first append replays the spool before writing
    assert not log.spooled()

    got = await log.read_range()
    assert [g.trajectory.id for g in got] == [t.id for t in sent]
    assert [g.trajectory for g in got] == sent
    fb = await log.feedback(sent[12].id)
    assert [f.corrected_answer for f in fb] == ["12"]
    await log.aclose()


async def test_replay_is_idempotent_when_the_first_write_landed(private_redis, tmp_path):
    # The write reached Redis but the reply was lost, so the record was also spooled: the
    # dedupe key makes the replay a no-op.
    log = TrajectoryLog(private_redis.url, tmp_path / "spool", prefix="t2")
    t = traj(1)
    rec = SpoolRecord(kind="trajectory", dedupe=f"t:{t.id}", payload=t.model_dump_json())
    await log._send(rec)
    log._spool(rec)
    await log.append(t)  # a second append of the same trajectory is also a no-op
    assert await log.flush()
    assert await log.length() == 1
    assert not log.spooled()
    await log.aclose()


async def test_readers_by_id_range_and_consumer_group(private_redis, tmp_path):
    log = TrajectoryLog(private_redis.url, tmp_path / "spool", prefix="t3")
    ts = [traj(i) for i in range(5)]
    for t in ts:
        await log.append(t)
    everything = await log.read_range()
    middle = await log.read_range(everything[1].entry_id, everything[3].entry_id)
    assert [m.trajectory.id for m in middle] == [t.id for t in ts[1:4]]
    after = await log.read_range("(" + everything[3].entry_id)
    assert [m.trajectory.id for m in after] == [ts[4].id]
    assert (await log.get(ts[2].id)) == ts[2]
    assert await log.get("nope") is None

    await log.ensure_group("trainer")
    await log.ensure_group("trainer")  # idempotent
    first = await log.read_group("trainer", "w1", count=3)
    second = await log.read_group("trainer", "w2", count=10)
    assert [e.trajectory.id for e in first + second] == [t.id for t in ts]
    assert await log.ack("trainer", *[e.entry_id for e in first]) == 3
    assert await log.read_group("trainer", "w1", count=10) == []
    await log.aclose()


async def test_concurrent_appends_while_redis_is_down_keep_order(private_redis, tmp_path):
    log = TrajectoryLog(private_redis.url, tmp_path / "spool", prefix="t4", retry_interval_s=0.0)
    private_redis.kill()
    ts = [traj(i) for i in range(8)]
    for t in ts:  # appended in order from one task
        await log.append(t)
    private_redis.start()
    await asyncio.gather(*(log.flush() for _ in range(3)))  # concurrent replays do not duplicate
    got = await log.read_range()
    assert [g.trajectory.id for g in got] == [t.id for t in ts]
    await log.aclose()
