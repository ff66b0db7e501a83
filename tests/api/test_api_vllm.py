"""``MATHAGENT_ENGINE=vllm``: the gateway builds the HTTP engine on a real vLLM server (the
session's shared server, :mod:`support.vllm`) and serves solves and chat through it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from support.gateway_stack import RunningApp, Stack
from support.vllm import RunningVLLM


@pytest.fixture
def vllm_app(stack: Stack, vllm: RunningVLLM) -> Iterator[RunningApp]:
    """A gateway as production builds it: engine=vllm, the tokenizer from the checkpoint vLLM serves."""
    app = stack.serve(None, engine="vllm", vllm_url=vllm.url, vllm_model=vllm.served_name, model=str(vllm.model_dir),
                      max_new_tokens=24, max_total_tokens=1024, max_turns=1, rate_limit_per_minute=0)
    yield app
    stack.stop_app(app)


def test_gateway_serves_solves_and_chat_through_vllm(vllm_app: RunningApp, vllm: RunningVLLM) -> None:
    import httpx

    engine = vllm_app.state.engine
    assert type(engine).__name__ == "OpenAIHTTPEngine" and engine.model_version == vllm.version
    assert httpx.get(f"{vllm.url}/weight_info").json()["weight_version"] == vllm.version  # labelled at start

    with vllm_app.client() as c:
        r = c.post("/v1/solve", json={"problem": "What is 2 + 3?", "mode": "cot"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == vllm.version
        traj = c.get(f"/v1/trajectories/{body['trajectory_ids'][0]}").json()["trajectory"]
    model_ids = [t for s in traj["segments"] if s["kind"] == "model" for t in s["token_ids"]]
    assert 0 < len(model_ids) <= 24  # exactly the ids vLLM sampled, within the turn budget

    client = openai.OpenAI(base_url=f"{vllm_app.url}/v1", api_key="k", max_retries=0)
    stream = client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "1+1?"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() and chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 24
    assert {ch.system_fingerprint for ch in chunks} == {vllm.version}
