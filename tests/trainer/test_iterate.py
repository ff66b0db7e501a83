"""The iteration driver through ``mathagent iterate``: a rejected candidate never becomes active
and the rejection numbers are recorded; prompts come from the training set and from logged,
labelled user trajectories (real Redis, random key prefix). Plus the driver's small pieces:
resumable rollout files, run-state mismatch, the temperature schedule, job ids, the schedule."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.trajectory import Feedback, Mode, Source, Trajectory
from mathagent.cli import app
from trainer.recipe import RetrainRequest, resolve_recipe
from trainer.settings import TrainerSettings

REDIS_URL = "redis://127.0.0.1:6379/0"


def _cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def prefix():
    p = f"test-iterate-{uuid.uuid4().hex[:8]}"
    yield p
    _cleanup(p)


async def _log_user_traffic(prefix: str, spool: Path) -> None:
    from agent.trajlog import Feedback as FeedbackRecord
    from agent.trajlog import TrajectoryLog

    log = TrajectoryLog(REDIS_URL, spool, prefix=prefix)
    try:
        await log.append(Trajectory(problem="What is 6 times 7?", gold="42", answer="41", correct=False))
        up = Trajectory(problem="What is 10 minus 3?", answer="7")
        corrected = Trajectory(problem="What is 2 plus 2?", answer="5", feedback=Feedback.down)
        plain = Trajectory(problem="What is 9 plus 9?", answer="18")
        for t in (up, corrected, plain):
            await log.append(t)
        await log.append(Trajectory(problem="Rollout only 1+1?", gold="2", source=Source.rollout))
        await log.add_feedback(FeedbackRecord(trajectory_id=up.id, rating="up"))
        await log.add_feedback(FeedbackRecord(trajectory_id=corrected.id, rating="down", corrected_answer="4"))
    finally:
        await log.aclose()


@pytest.mark.slow
def test_rejected_candidate_is_recorded_and_never_active(tmp_path, tiny_model, prefix, monkeypatch):
    from support.sandbox_service import running_sandbox

    from trainer.registry import Registry

    asyncio.run(_log_user_traffic(prefix, tmp_path / "spool"))
    env = {
        "MATHAGENT_STATE_DIR": str(tmp_path / "state"), "MATHAGENT_MODEL": str(tiny_model),
        "MATHAGENT_REDIS_URL": REDIS_URL, "MATHAGENT_REDIS_PREFIX": prefix, "MATHAGENT_DEV": "1",
        "MATHAGENT_MAX_NEW_TOKENS": "12", "MATHAGENT_MAX_TURNS": "1", "MATHAGENT_PAIRS_K": "2",
        "MATHAGENT_BATCH_SIZE": "2", "MATHAGENT_LR": "1e-4",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    run_dir = tmp_path / "run"
    args = ["iterate", "--dataset", "synthetic", "--train-limit", "2", "--eval-limit", "3", "--samples", "2",
            "--run-dir", str(run_dir), "--tolerance", "-0.5", "--max-steps", "2"]

    async def main() -> object:
        async with running_sandbox(tmp_path / "sbx"):
            monkeypatch.setenv("MATHAGENT_SANDBOX_URL", f"unix://{tmp_path / 'sbx' / 'sandbox.sock'}")
            return await asyncio.to_thread(CliRunner().invoke, app, args)

    result = asyncio.run(main())
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["outcome"]["status"] == "rejected"
    gate = state["outcome"]["iterations"][0]["gate"]
    # the tiny random model solves nothing: 0.0 >= 0.0 + 0.5 fails
    assert gate["accuracy_current"] == 0.0 and gate["accuracy_candidate"] == 0.0 and gate["promoted"] is False
    assert gate["tolerance"] == -0.5 and gate["n"] == 3
    steps = state["iterations"][0]["steps"]
    assert "publish" not in steps and "deploy" not in steps and steps["train"]["outputs"]["steps"] == 2
    reg = Registry(tmp_path / "state" / "registry")
    assert [m.version for m in reg.manifests()] == ["v0001"] and reg.pointer().active is None
    assert "rejected" in result.output  # type: ignore[attr-defined]

    # prompts: 2 from the data set + the labelled and unlabelled user traffic, never rollouts
    prompts = [json.loads(line) for line in (run_dir / "iter-01" / "prompts.jsonl").read_text().splitlines()]
    logged = {p["problem"]: p["gold"] for p in prompts if p["origin"] == "log"}
    assert logged == {"What is 6 times 7?": "42", "What is 10 minus 3?": "7", "What is 2 plus 2?": "4",
                      "What is 9 plus 9?": None}
    assert sum(p["origin"] == "dataset" for p in prompts) == 2

    # the same command again: the finished run is not redone; another recipe is refused clearly
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "rejected" in again.output
    other = CliRunner().invoke(app, [*args[:-1], "3"])
    assert other.exit_code == 2 and "different recipe (differs in: max_steps)" in other.output


def test_torn_rollout_line_is_cut_and_the_rest_kept(tmp_path):
    from trainer.rollouts import RolloutFileError, RolloutRecord, read_rollouts

    path = tmp_path / "rollouts.jsonl"
    recs = [RolloutRecord(prompt_id=f"p{i}", trajectories=[Trajectory(problem=f"q{i}")]) for i in range(2)]
    whole = "".join(r.model_dump_json() + "\n" for r in recs)
    path.write_text(whole + recs[0].model_dump_json()[:40])
    assert sorted(read_rollouts(path)) == ["p0", "p1"]
    assert path.read_text() == whole
    path.write_text("{broken\n" + whole)
    with pytest.raises(RolloutFileError, match=":1:"):
        read_rollouts(path)


def test_recipe_schedule_and_run_dir_mismatch(tmp_path, monkeypatch):
    from trainer.runstate import RunDir, RunStateError

    monkeypatch.setenv("MATHAGENT_TEMPERATURES", "0.8,0.8,1.3")
    settings = TrainerSettings(state_dir=tmp_path)
    recipe = resolve_recipe(settings, RetrainRequest(iterations=2))
    assert [recipe.temperature(t) for t in (1, 2, 3, 4, 9)] == [0.8, 0.8, 1.3, 1.3, 1.3]
    RunDir(tmp_path / "run", "r", recipe)
    RunDir(tmp_path / "run", "r", recipe)  # same recipe: resumes
    with pytest.raises(RunStateError, match="differs in: samples"):
        RunDir(tmp_path / "run", "r", recipe.model_copy(update={"samples": 3}))
    monkeypatch.setenv("MATHAGENT_TEMPERATURES", "hot")
    with pytest.raises(ValueError, match="comma-separated numbers"):
        TrainerSettings(state_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        RetrainRequest(dataset="imagenet")


async def test_schedule_enqueues_after_m_labels_once(prefix, monkeypatch):
    """Labels counted from the log streams; one job per trigger; none while one is queued."""
    from agent.trajlog import Feedback as FeedbackRecord
    from agent.trajlog import TrajectoryLog
    from trainer.jobs import connect, list_jobs
    from trainer.schedule import check_schedule

    queue = f"{prefix}:queue"
    settings = TrainerSettings(redis_url=REDIS_URL, redis_prefix=prefix, queue_name=queue, retrain_after_labels=3)
    pool = await connect(REDIS_URL)
    log = TrajectoryLog(REDIS_URL, Path(os.environ.get("TMPDIR", "/tmp")) / prefix, prefix=prefix)
    try:
        await log.append(Trajectory(problem="old", gold="1"))  # before the schedule existed: not counted
        first = await check_schedule(pool, settings)
        assert first.new_labels == 0 and first.enqueued is None
        await log.append(Trajectory(problem="a", gold="1"))
        await log.append(Trajectory(problem="b"))  # unlabelled
        await log.append(Trajectory(problem="c", gold="2", source=Source.rollout))  # not user traffic
        await log.add_feedback(FeedbackRecord(trajectory_id="x", rating="up"))
        second = await check_schedule(pool, settings)
        assert second.new_labels == 2 and second.labels_total == 2 and second.enqueued is None
        await log.append(Trajectory(problem="d", gold="3", mode=Mode.cot))
        third = await check_schedule(pool, settings)
        assert third.enqueued is not None and third.enqueued.created and third.enqueued.job.trigger == "schedule"
        assert [j.job_id for j in await pool.queued_jobs(queue_name=queue)] == [third.enqueued.job.id]
        for i in range(3):
            await log.append(Trajectory(problem=f"e{i}", gold="1"))
        fourth = await check_schedule(pool, settings)  # the first job is still queued: no second one
        assert fourth.enqueued is None and "queued or running" in fourth.reason
        assert len(await list_jobs(pool, prefix=settings.job_prefix)) == 1
    finally:
        for job in await pool.queued_jobs(queue_name=queue):
            await pool.delete(f"arq:job:{job.job_id}")
        await pool.delete(queue)
        await log.aclose()
        await pool.aclose()
