"""While the sandbox does not answer, solves that run code are refused at once (503 with
Retry-After and a message that says what to do) instead of being admitted and failing minutes
later; what needs no sandbox (plain generation, chain of thought) is still served."""

from __future__ import annotations

import time

import openai
import pytest
from support.gateway_stack import RunningApp
from support.outage import sandbox_down


def test_solves_are_refused_at_once_while_the_sandbox_is_down(tiny_app: RunningApp) -> None:
    with sandbox_down(tiny_app), tiny_app.client() as c:
        assert c.get("/readyz").status_code == 503
        t0 = time.monotonic()
        r = c.post("/v1/solve", json={"problem": "What is 2 + 2?"})
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) > 0
        err = r.json()["error"]
        assert err["code"] == "sandbox_unavailable" and err["type"] == "service_unavailable_error"
        assert "retry" in err["message"] and "/readyz" in err["message"]
        assert elapsed < 30, elapsed  # refused at admission, not after a cell timed out (about 2 minutes before)
        streamed = c.post("/v1/solve", json={"problem": "What is 2 + 2?", "stream": True})
        assert streamed.status_code == 503  # before any event is sent
        cot = c.post("/v1/solve", json={"problem": "What is 2 + 2?", "mode": "cot"})
        assert cot.status_code == 200, cot.text  # chain of thought runs no code

        client = openai.OpenAI(base_url=f"{tiny_app.url}/v1", api_key="sk-test", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError) as chat:
            client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "2 + 2?"}])
        assert chat.value.status_code == 503 and chat.value.code == "sandbox_unavailable"
        plain = client.chat.completions.create(model="mathagent-plain", messages=[{"role": "user", "content": "hi"}])
        assert plain.choices[0].message.content is not None
    with tiny_app.client() as c:  # back: admitted again
        assert c.post("/v1/solve", json={"problem": "What is 2 + 2?"}).status_code == 200


def test_no_model_loaded_is_503_with_retry_after(tiny_app: RunningApp) -> None:
    solver = tiny_app.state.solver
    tiny_app.state.solver = None
    try:
        with tiny_app.client() as c:
            r = c.post("/v1/chat/completions", json={"model": "mathagent", "messages": [{"role": "user", "content": "1"}]})
    finally:
        tiny_app.state.solver = solver
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    assert int(r.headers["retry-after"]) > 0
