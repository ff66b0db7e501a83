"""Open WebUI's housekeeping requests (title, tags, follow-ups), replayed as it sends them, against
the running gateway: each is answered by one plain generation, is no agent episode, and leaves
nothing in the trajectory stream the trainer samples from. A real problem, as a control, is."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from support.gateway_stack import RunningApp
from support.open_webui import CHAT, requests

STREAM = "mathagent:trajectories"


def _episodes(app: RunningApp) -> float:
    return sum(s.value for m in app.state.metrics.episodes.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.mark.parametrize("model", ["mathagent", "mathagent-plain"])
def test_open_webui_housekeeping_is_plain_and_not_logged(tiny_app: RunningApp, redis_client: redis.Redis,
                                                         model: str) -> None:
    from api.housekeeping import MAX_TOKENS

    cap = min(tiny_app.state.settings.max_new_tokens, MAX_TOKENS)
    with tiny_app.client() as c:
        for name, body in requests(model):
            before, episodes = redis_client.xlen(STREAM), _episodes(tiny_app)
            t0 = time.monotonic()
            r = c.post("/v1/chat/completions", json=body)
            elapsed = time.monotonic() - t0
            assert r.status_code == 200, (name, r.text)
            out: dict[str, Any] = r.json()
            assert out["trajectory_id"] is None and "x-trajectory-id" not in r.headers, name  # no episode behind it
            assert out["model"] == model and out["model_version"] == "tiny-random-v1"
            choice = out["choices"][0]
            assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
            assert "```python" not in choice["message"]["content"]
            assert 0 < out["usage"]["completion_tokens"] <= cap, name  # one generation, never a multi-turn episode
            assert redis_client.xlen(STREAM) == before, f"{name} reached the trajectory stream"
            assert _episodes(tiny_app) == episodes, f"{name} ran an agent episode"
            print(f"{model} {name}: {elapsed:.2f}s, {out['usage']['completion_tokens']} tokens")


def test_a_problem_is_still_an_episode_and_logged(tiny_app: RunningApp, redis_client: redis.Redis) -> None:
    """The control: the rule above must not catch a user's problem."""
    before, episodes = redis_client.xlen(STREAM), _episodes(tiny_app)
    with tiny_app.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "mathagent", "messages": [*CHAT, {
            "role": "user", "content": "### Task: double the previous result."}]})
    assert r.status_code == 200, r.text
    assert r.json()["trajectory_id"]
    assert redis_client.xlen(STREAM) == before + 1
    assert _episodes(tiny_app) == episodes + 1


def test_streamed_housekeeping_is_plain_too(tiny_app: RunningApp, redis_client: redis.Redis) -> None:
    from support.sse_client import events

    _, body = requests("mathagent")[2]
    before = redis_client.xlen(STREAM)
    with tiny_app.client() as c, c.stream("POST", "/v1/chat/completions",
                                          json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        chunks = [d for _, d in events(r)]
    assert chunks[-1] == "[DONE]"
    assert all(ch.get("trajectory_id") is None for ch in chunks[:-1])
    assert chunks[-2]["usage"]["completion_tokens"] > 0 and chunks[-2]["choices"] == []
    assert redis_client.xlen(STREAM) == before


def test_housekeeping_replies_stay_short(tiny_app: RunningApp) -> None:
    """Open WebUI asks up to 1000 tokens for a title: a housekeeping reply is cut at
    housekeeping.MAX_TOKENS even where the server allows longer turns; the plain model is not."""
    from api.housekeeping import MAX_TOKENS

    state = tiny_app.state
    saved = state.settings
    state.settings = saved.model_copy(update={"max_new_tokens": MAX_TOKENS + 16, "max_total_tokens": 2048})
    try:
        with tiny_app.client(timeout=600) as c:
            title = c.post("/v1/chat/completions", json=requests("mathagent")[0][1]).json()
            story = c.post("/v1/chat/completions", json={"model": "mathagent-plain", "max_tokens": MAX_TOKENS + 8,
                                                         "messages": [{"role": "user", "content": "Tell a story."}]})
    finally:
        state.settings = saved
    assert title["usage"]["completion_tokens"] <= MAX_TOKENS, title["usage"]
    assert story.status_code == 200
    # the tiny random model never ends a reply by itself: the plain model ran past the housekeeping cap
    assert story.json()["usage"]["completion_tokens"] == MAX_TOKENS + 8
