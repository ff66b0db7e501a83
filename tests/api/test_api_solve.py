"""The solve API, trajectories, feedback, idempotency, metrics and limits against the running
gateway (real Redis, real sandbox, a tiny random model)."""

from __future__ import annotations

import json
import time

import httpx
import redis
from support.gateway_stack import RunningApp
from support.sse_client import events


def test_health_lists_every_component_and_ready(tiny_app: RunningApp) -> None:
    with tiny_app.client() as c:
        health = c.get("/healthz").json()
        ready = c.get("/readyz")
    assert health["status"] == "ok"
    assert set(health["components"]) == {"gateway", "model", "redis", "sandbox", "trainer"}
    assert health["components"]["model"]["version"] == "tiny-random-v1"
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert {k: v["status"] for k, v in body["checks"].items()} == {"model": "up", "sandbox": "up", "redis": "up"}


def test_solve_returns_answer_fields_and_logs_the_trajectory(tiny_app: RunningApp) -> None:
    with tiny_app.client() as c:
        r = c.post("/v1/solve", json={"problem": "What is 2 + 3?", "gold": "5"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "tiny-random-v1" == r.headers["x-model-version"]
        assert r.headers["x-trajectory-id"] == body["trajectory_id"]
        assert body["correct"] is (body["answer"] == "5")  # graded because gold was given
        assert body["vote"] is None
        got = c.get(f"/v1/trajectories/{body['trajectory_id']}")
    assert got.status_code == 200
    traj = got.json()["trajectory"]
    assert traj["problem"] == "What is 2 + 3?" and traj["gold"] == "5"
    assert traj["model_version"] == "tiny-random-v1"
    assert traj["segments"][0]["kind"] == "prompt"


def test_samples_give_vote_shares(tiny_app: RunningApp) -> None:
    with tiny_app.client() as c:
        body = c.post("/v1/solve", json={"problem": "Pick a number.", "samples": 2, "temperature": 1.0, "seed": 3}).json()
    assert body["vote"]["k"] == 2
    assert len(body["trajectory_ids"]) == 2
    assert abs(sum(body["vote"]["shares"].values()) - sum(body["vote"]["counts"].values()) / 2) < 1e-9


def test_streamed_solve_sends_each_step_then_the_result(tiny_app: RunningApp) -> None:
    with tiny_app.client() as c, c.stream("POST", "/v1/solve", json={"problem": "What is 7 * 6?", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        evs = list(events(r))
    names = [n for n, _ in evs]
    assert names[0] == "start" and names[-1] == "done"
    assert "text" in names and "answer" in names and "episode_done" in names
    start, result = evs[0][1], evs[-1][1]["result"]
    assert start["trajectory_id"] == result["trajectory_id"] == r.headers["x-trajectory-id"]
    assert start["model_version"] == result["model_version"] == "tiny-random-v1"
    streamed = "".join(d["text"] for n, d in evs if n == "text")
    assert streamed == result["text"]


def test_feedback_is_stored_in_redis_for_the_trainer(tiny_app: RunningApp, redis_client: redis.Redis) -> None:
    with tiny_app.client() as c:
        solved = c.post("/v1/solve", json={"problem": "What is 1 + 1?"}).json()
        tid, token = solved["trajectory_id"], solved["feedback_token"]
        r = c.post(f"/v1/trajectories/{tid}/feedback",
                   json={"rating": "down", "answer": "2", "comment": "wrong", "feedback_token": token})
        assert r.status_code == 201, r.text
        assert r.json()["trusted"] is True
        stored = [json.loads(x) for x in redis_client.hvals(f"mathagent:feedback:by-caller:{tid}")]
        assert [(f["rating"], f["corrected_answer"], f["comment"], f["trusted"]) for f in stored] == [
            ("down", "2", "wrong", True)]
        streamed = [json.loads(f["data"]) for _, f in redis_client.xrange("mathagent:feedback")]
        assert any(f["trajectory_id"] == tid and f["corrected_answer"] == "2" for f in streamed)  # the trainer's feed
        assert c.get(f"/v1/trajectories/{tid}").json()["feedback"][0]["rating"] == "down"
        missing = c.post("/v1/trajectories/doesnotexist/feedback", json={"rating": "up"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "trajectory_not_found"
        bad = c.post(f"/v1/trajectories/{tid}/feedback", json={"rating": "meh"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "rating"


def test_idempotency_key_answers_a_retry_without_a_second_solve(tiny_app: RunningApp, redis_client: redis.Redis) -> None:
    before = redis_client.xlen("mathagent:trajectories")
    with tiny_app.client() as c:
        h = {"Idempotency-Key": f"k-{time.time_ns()}"}
        first = c.post("/v1/solve", json={"problem": "What is 9 - 4?"}, headers=h)
        again = c.post("/v1/solve", json={"problem": "What is 9 - 4?"}, headers=h)
        other = c.post("/v1/solve", json={"problem": "What is 9 - 5?"}, headers=h)
    assert first.status_code == again.status_code == 200
    assert again.json()["trajectory_id"] == first.json()["trajectory_id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert redis_client.xlen("mathagent:trajectories") == before + 1
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_metrics_count_requests_episodes_tokens_and_version(tiny_app: RunningApp) -> None:
    with tiny_app.client() as c:
        c.post("/v1/solve", json={"problem": "What is 3 + 3?"})
        text = c.get("/metrics").text
    assert 'mathagent_http_requests_total{method="POST",route="/v1/solve",status="200"}' in text
    assert "mathagent_http_request_seconds_bucket" in text
    assert 'mathagent_episodes_total{finish_reason=' in text
    tokens = [line for line in text.splitlines() if line.startswith("mathagent_tokens_generated_total")]
    assert tokens and float(tokens[0].split()[-1]) > 0
    assert 'mathagent_active_model_version{version="tiny-random-v1"} 1.0' in text




def test_client_disconnect_cancels_generation(tiny_app: RunningApp) -> None:
    solver, engine, metrics = tiny_app.state.solver, tiny_app.state.engine, tiny_app.state.metrics
    saved = solver.settings
    solver.settings = saved.model_copy(update={"max_new_tokens": 4000, "max_total_tokens": 5000})
    cancelled_before = metrics.episodes_cancelled._value.get()
    try:
        with httpx.Client(base_url=tiny_app.url, timeout=60) as c, c.stream(
            "POST", "/v1/solve", json={"problem": "Talk forever.", "stream": True}
        ) as r:
            for name, _ in events(r):
                if name == "text":
                    break  # the client goes away mid-generation
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (engine.active_rows or metrics.in_flight._value.get()):
            time.sleep(0.05)
    finally:
        solver.settings = saved
    assert engine.active_rows == 0
    assert metrics.in_flight._value.get() == 0
    assert metrics.episodes_cancelled._value.get() == cancelled_before + 1


def test_chat_completion_idempotency_key_answers_a_retry(tiny_app: RunningApp, redis_client: redis.Redis) -> None:
    before = redis_client.xlen("mathagent:trajectories")
    body = {"model": "mathagent", "messages": [{"role": "user", "content": "What is 9 - 4?"}]}
    with tiny_app.client() as c:
        h = {"Idempotency-Key": f"chat-{time.time_ns()}"}
        first = c.post("/v1/chat/completions", json=body, headers=h)
        again = c.post("/v1/chat/completions", json=body, headers=h)
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.headers["x-trajectory-id"] == first.json()["trajectory_id"]
    assert redis_client.xlen("mathagent:trajectories") == before + 1
