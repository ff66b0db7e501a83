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
        # trusted feedback (the solving caller's token, or an admin) labels; anyone else's only votes
        await log.add_feedback(FeedbackRecord(trajectory_id=up.id, rating="up", caller="owner", trusted=True))
        await log.add_feedback(FeedbackRecord(trajectory_id=corrected.id, rating="down", corrected_answer="4",
                                              caller="owner", trusted=True))
        for i in range(3):  # a stranger's flood on the corrected one, and on the unlabelled one
            await log.add_feedback(FeedbackRecord(trajectory_id=corrected.id, rating="down", corrected_answer="5",
                                                  caller="addr:stranger"))
            await log.add_feedback(FeedbackRecord(trajectory_id=plain.id, rating="up", corrected_answer=f"1{i}",
                                                  caller=f"addr:stranger-{i % 2}"))
    finally:
        await log.aclose()


@pytest.mark.slow
def test_rejected_candidate_is_recorded_and_never_active(tmp_path, tiny_model, prefix, monkeypatch):
    from support.sandbox_service import running_sandbox

    from agent.modelstore import resolve
    from trainer.registry import Registry

    asyncio.run(_log_user_traffic(prefix, tmp_path / "spool"))
    env = {
        "MATHAGENT_STATE_DIR": str(tmp_path / "state"), "MATHAGENT_MODEL": str(tiny_model),
        "MATHAGENT_REDIS_URL": REDIS_URL, "MATHAGENT_REDIS_PREFIX": prefix, "MATHAGENT_DEV": "1",
        "MATHAGENT_MAX_NEW_TOKENS": "12", "MATHAGENT_MAX_TURNS": "1", "MATHAGENT_PAIRS_K": "2",
        "MATHAGENT_BATCH_SIZE": "2", "MATHAGENT_LR": "1e-4", "MATHAGENT_GATE_MIN_PROBLEMS": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    run_dir = tmp_path / "run"
    args = ["iterate", "--dataset", "synthetic", "--train-limit", "2", "--eval-limit", "3", "--samples", "2",
            "--run-dir", str(run_dir), "--tolerance", "0.5", "--max-steps", "2"]

    async def main() -> object:
        async with running_sandbox(tmp_path / "sbx"):
            monkeypatch.setenv("MATHAGENT_SANDBOX_URL", f"unix://{tmp_path / 'sbx' / 'sandbox.sock'}")
            return await asyncio.to_thread(CliRunner().invoke, app, args)

    result = asyncio.run(main())
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["outcome"]["status"] == "rejected"
    gate = state["outcome"]["iterations"][0]["gate"]
    # the tiny random model solves nothing: a tie at 0% is evidence of nothing, whatever the margin
    assert gate["accuracy_current"] == 0.0 and gate["accuracy_candidate"] == 0.0 and gate["promoted"] is False
    assert gate["tolerance"] == 0.5 and gate["n"] == 3 and (gate["wins"], gate["losses"]) == (0, 0)
    assert "solve none" in gate["reason"] and gate["forced"] is False
    steps = state["iterations"][0]["steps"]
    assert "publish" not in steps and "deploy" not in steps and steps["train"]["outputs"]["steps"] == 2
    reg = Registry(tmp_path / "state" / "registry")
    base = resolve(str(tiny_model), tmp_path / "state").version  # the import is named as a gateway serves it
    assert [m.version for m in reg.manifests()] == [base] and reg.pointer().active is None
    assert "rejected" in result.output  # type: ignore[attr-defined]

    # prompts: 2 from the data set + the labelled and unlabelled user traffic, never rollouts; only
    # trusted feedback labels: the stranger's answers are votes, one per caller (its latest)
    prompts = [json.loads(line) for line in (run_dir / "iter-01" / "prompts.jsonl").read_text().splitlines()]
    logged = {p["problem"]: p["gold"] for p in prompts if p["origin"] == "log"}
    assert logged == {"What is 6 times 7?": "42", "What is 10 minus 3?": "7", "What is 2 plus 2?": "4",
                      "What is 9 plus 9?": None}
    votes = {p["problem"]: p["votes"] for p in prompts if p["origin"] == "log"}
    assert votes["What is 2 plus 2?"] == {"5": 1} and votes["What is 9 plus 9?"] == {"12": 1, "11": 1}
    assert sum(p["origin"] == "dataset" for p in prompts) == 2

    # the same command again: the finished run is not redone; another recipe is refused clearly
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "rejected" in again.output
    other = CliRunner().invoke(app, [*args[:-1], "3"])
    assert other.exit_code == 2 and "different recipe (differs in: max_steps)" in other.output


async def test_eval_progress_counts_problems_and_both_accuracies_update_as_they_go(tmp_path, tiny_model, prefix):
    """The job record during the gate: done/total count held-out problems of both versions, and
    each version's accuracy so far is there while it is evaluated (not only at the end)."""
    import shutil

    from support.sandbox_service import running_sandbox

    from agent.datasets import synthetic_problems
    from trainer.iterate import Driver
    from trainer.progress import Phase, Progress

    seen: list[Progress] = []

    async def record(p: Progress) -> None:
        seen.append(p)

    async with running_sandbox(tmp_path / "sbx"):
        settings = TrainerSettings(state_dir=tmp_path / "state", model=str(tiny_model), redis_url=REDIS_URL,
                                   redis_prefix=prefix, dev=True, max_new_tokens=8, max_turns=1,
                                   sandbox_url=f"unix://{tmp_path / 'sbx' / 'sandbox.sock'}", gate_min_problems=1)
        recipe = resolve_recipe(settings, RetrainRequest(dataset="synthetic", train_limit=1, eval_limit=3))
        driver = Driver(settings, recipe, tmp_path / "run", run_id="progress", progress=record)
        d = driver.rd.iter_dir(1)
        (d / "heldout.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in synthetic_problems(3, seed=5)))
        shutil.copytree(tiny_model, d / "train")  # the "candidate": the same weights
        try:
            out = await driver.step_eval(1, {"version": "base", "path": str(tiny_model)})
        finally:
            await driver.resources.aclose()
    evals = [p for p in seen if p.phase is Phase.eval]
    assert {p.total for p in evals} == {6}
    dones = [p.done for p in evals]
    assert dones == sorted(dones) and set(range(7)) <= set(dones)  # one step per problem, 0..6
    for p in evals:
        if 1 <= p.done <= 3:  # the current version's problems
            assert p.accuracy_current is not None and p.accuracy_candidate is None, p
        if 4 <= p.done <= 5:  # the candidate's, the current's accuracy kept
            assert p.accuracy_current is not None and p.accuracy_candidate is not None, p
    assert evals[-1].done == 6 and evals[-1].message == out["gate"]["reason"]


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
        await log.add_feedback(FeedbackRecord(trajectory_id="x", rating="up", trusted=True))
        await log.add_feedback(FeedbackRecord(trajectory_id="y", rating="up"))  # a vote: not a label
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


async def test_a_lora_version_as_the_base_is_merged_into_a_whole_checkpoint(tmp_path, tiny_model, prefix):
    """When the active version is a LoRA adapter (what a LoRA retrain publishes), the next
    iteration rolls out, trains and evaluates from the adapter merged into the weights it was
    trained on, with their tokenizer (an adapter directory has neither): the merged model gives
    the adapter's outputs, not the base's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from agent.modelstore import load_model, load_tokenizer
    from trainer.iterate import Driver
    from trainer.registry import Registry

    settings = TrainerSettings(state_dir=tmp_path / "state", model=str(tiny_model), redis_url=REDIS_URL,
                               redis_prefix=prefix, dev=True, registry_dir=tmp_path / "registry")
    registry = Registry(settings.registry_dir)
    registry.publish(tiny_model, base_model=str(tiny_model), version="v0001")
    torch.manual_seed(0)
    peft = get_peft_model(load_model(tiny_model), LoraConfig(r=4, init_lora_weights=False,
                                                             target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(tmp_path / "adapter")
    registry.publish(tmp_path / "adapter", base_model="v0001", parent="v0001", kind="lora", version="v0002")
    registry.activate("v0002")

    recipe = resolve_recipe(settings, RetrainRequest(dataset="synthetic", train_limit=1, eval_limit=1))
    driver = Driver(settings, recipe, tmp_path / "run", run_id="lora-base")
    try:
        base = await driver.step_base(1)
    finally:
        await driver.resources.aclose()
    assert base["version"] == "v0002" and base["kind"] == "lora"
    merged = Path(base["path"])
    assert merged != registry.path("v0002") and (merged / "config.json").is_file()
    load_tokenizer(merged)  # loads: the base's tokenizer came along
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = peft(ids).logits
        got = load_model(merged)(ids).logits
        plain = load_model(tiny_model)(ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, plain, atol=1e-4)
