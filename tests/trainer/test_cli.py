"""``mathagent pairs`` from a file and from the real Redis log, ``mathagent train`` errors."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from typer.testing import CliRunner

from agent.trajectory import Feedback
from mathagent.cli import app
from trainer.io import read_pairs


def _trajs(make_traj):
    return [
        make_traj("q1", [("p", [1, 2]), ("m", [10, 2])], correct=True, problem_id="q1"),
        make_traj("q1", [("p", [1, 2]), ("m", [20, 2])], correct=False, problem_id="q1", feedback=Feedback.down),
        make_traj("q1", [("p", [1, 2]), ("m", [30, 2])], correct=False, problem_id="q1"),
    ]


def test_pairs_from_file_and_clear_errors(tmp_path, make_traj):
    src = tmp_path / "t.jsonl"
    src.write_text("".join(t.model_dump_json() + "\n" for t in _trajs(make_traj)))
    out = tmp_path / "pairs.jsonl"
    r = CliRunner().invoke(app, ["pairs", "--from-file", str(src), "--scheme", "irpo", "--k", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert [(p.chosen.input_ids[2], p.rejected.input_ids[2]) for p in read_pairs(out)] == [(10, 20), (10, 30), (10, 20)]
    src.write_text(src.read_text() + "{not json\n")
    r = CliRunner().invoke(app, ["pairs", "--from-file", str(src), "--out", str(out)])
    assert r.exit_code == 2 and ":4: not a trajectory" in r.output
    r = CliRunner().invoke(app, ["pairs", "--from-file", str(src), "--scheme", "nope", "--out", str(out)])
    assert r.exit_code == 2
    r = CliRunner().invoke(app, ["train", "--pairs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file" in r.output
    r = CliRunner().invoke(app, ["train", "--pairs", str(out), "--out", str(tmp_path / "o"), "--loss", "orpo"])
    assert r.exit_code == 2 and "--loss" in r.output and "dpo+nll" in r.output  # the choices come from TrainConfig
    r = CliRunner().invoke(app, ["train", "--pairs", str(out), "--out", str(tmp_path / "o"), "--loss", "srpo",
                                 "--alpha", "2"])
    assert r.exit_code == 2 and "mathagent: srpo: alpha is a convex weight" in r.output  # the model's own check


def test_pairs_from_redis_joins_trusted_feedback_only(tmp_path, make_traj, monkeypatch):
    redis = pytest.importorskip("redis")
    from agent.trajlog import Feedback as FeedbackRecord
    from agent.trajlog import TrajectoryLog

    prefix = f"test-trainer-{uuid.uuid4().hex[:8]}"
    url = "redis://127.0.0.1:6379/0"
    trajs = _trajs(make_traj)
    trajs[0].feedback = None

    async def fill():
        log = TrajectoryLog(url, tmp_path / "spool", prefix=prefix)
        for t in trajs:
            await log.append(t)
        await log.add_feedback(FeedbackRecord(trajectory_id=trajs[0].id, rating="up", trusted=True))
        # anyone else's rating (no feedback token) is a vote: it makes no pair
        await log.add_feedback(FeedbackRecord(trajectory_id=trajs[1].id, rating="up", caller="addr:x"))
        await log.aclose()

    try:
        asyncio.run(fill())
        monkeypatch.setenv("MATHAGENT_REDIS_URL", url)
        monkeypatch.setenv("MATHAGENT_STATE_DIR", str(tmp_path))
        out = tmp_path / "pairs.jsonl"
        r = CliRunner().invoke(app, ["pairs", "--from-redis", "--redis-prefix", prefix, "--scheme", "feedback", "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert [(p.chosen.input_ids[2], p.rejected.input_ids[2]) for p in read_pairs(out)] == [(10, 20)]
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
