"""Bad input gets a clear 4xx in the one error shape, never a 5xx or a traceback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support.gateway_stack import RunningApp


@pytest.fixture
def c(tiny_app: RunningApp) -> Iterator[httpx.Client]:
    with tiny_app.client() as client:
        yield client


def _error(r: httpx.Response, status: int | tuple[int, ...]) -> dict:
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    return dict(body["error"])


def test_oversized_body_is_413(c: httpx.Client, tiny_app: RunningApp) -> None:
    limit = tiny_app.state.settings.max_body_bytes
    err = _error(c.post("/v1/solve", json={"problem": "x" * (limit + 10)}), 413)
    assert err["type"] == "invalid_request_error"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body streams
        yield b'{"problem": "'
        for _ in range(limit // 1000 + 2):
            yield b"y" * 1000
        yield b'"}'

    _error(c.post("/v1/solve", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_problem_longer_than_the_cap_is_422(c: httpx.Client, tiny_app: RunningApp) -> None:
    cap = tiny_app.state.settings.max_problem_chars
    err = _error(c.post("/v1/solve", json={"problem": "z" * (cap + 1)}), 422)
    assert err["code"] == "problem_too_long" and err["param"] == "problem" and str(cap) in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"problem": 12}, "problem"),
        ({"problem": ["a"]}, "problem"),
        ({"problem": "2+2", "samples": "many"}, "samples"),
        ({"problem": "2+2", "samples": 0}, "samples"),
        ({"problem": "2+2", "max_turns": -1}, "max_turns"),
        ({"problem": "2+2", "temperature": "hot"}, "temperature"),
        ({"problem": "2+2", "stream": "perhaps"}, "stream"),
        ({"problem": "2+2", "mode": "guess"}, "mode"),
        ({"problem": "2+2", "surprise": 1}, "surprise"),
        ({}, "problem"),
        ({"problem": ""}, "problem"),
        ({"problem": " \n\t "}, "problem"),
        ({"problem": "2+2\u0000"}, "problem"),
    ],
)
def test_wrong_types_and_empty_problems_are_422(c: httpx.Client, body: dict, param: str) -> None:
    err = _error(c.post("/v1/solve", json=body), 422)
    assert err["param"] == param
    assert err["message"].startswith(param)


def test_caps_of_this_deployment_are_422(c: httpx.Client, tiny_app: RunningApp) -> None:
    s = tiny_app.state.settings
    assert _error(c.post("/v1/solve", json={"problem": "1+1", "samples": s.max_samples + 1}), 422)["code"] == "too_many_samples"
    assert _error(c.post("/v1/solve", json={"problem": "1+1", "max_turns": s.max_turns_limit + 1}), 422)["code"] == "too_many_turns"
    assert _error(c.post("/v1/solve", json={"problem": "1+1", "revisions": s.max_revisions + 1}), 422)["code"] == "too_many_revisions"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"problem": "\\ud800 lone surrogate"}',
        b'{"problem": "\xff\xfe not utf-8"}',
        b'{"problem": "unterminated',
        b"\x00\x01\x02",
        b"",
        b"[1, 2, 3]",
    ],
)
def test_unicode_garbage_and_broken_json_are_422(c: httpx.Client, raw: bytes) -> None:
    err = _error(c.post("/v1/solve", content=raw, headers={"content-type": "application/json"}), (400, 422))
    assert err["message"] and err["code"] in ("invalid_json", "invalid_value")


def test_unknown_routes_and_methods(c: httpx.Client) -> None:
    assert _error(c.get("/v1/nothing-here"), 404)["code"] == "not_found"
    assert _error(c.get("/v1/solve"), 405)["code"] == "method_not_allowed"
    assert _error(c.get("/v1/trajectories/has spaces!"), 422)["param"] == "trajectory_id"
    assert _error(c.get("/v1/trajectories/abc123"), 404)["code"] == "trajectory_not_found"


def test_chat_bad_inputs_are_400_as_openai_answers(c: httpx.Client) -> None:
    """The OpenAI routes answer 400 invalid_request_error (OpenAI and vLLM do), `param` spelled as OpenAI does."""
    assert _error(c.post("/v1/chat/completions", json={"model": "mathagent", "messages": []}), 400)["param"] == "messages"
    assert _error(c.post("/v1/chat/completions", json={"model": "mathagent"}), 400)["param"] == "messages"
    bad_role = {"model": "mathagent", "messages": [{"role": "wizard", "content": "1+1"}]}
    assert _error(c.post("/v1/chat/completions", json=bad_role), 400)["param"] == "messages[0].role"
    tool_msg = {"model": "mathagent", "messages": [{"role": "user", "content": "1+1"},
                                                   {"role": "tool", "content": "2", "tool_call_id": "x"}]}
    assert _error(c.post("/v1/chat/completions", json=tool_msg), 400)["param"] == "messages[1].role"
    last_assistant = {"model": "mathagent", "messages": [{"role": "user", "content": "1+1"},
                                                         {"role": "assistant", "content": "2"}]}
    assert _error(c.post("/v1/chat/completions", json=last_assistant), 400)["code"] == "no_user_message"
    for field, value in (("response_format", {"type": "json_object"}), ("logprobs", True), ("stop", ["\n"]),
                         ("frequency_penalty", 0.5), ("tool_choice", "auto")):
        body = {"model": "mathagent", field: value, "messages": [{"role": "user", "content": "1+1"}]}
        err = _error(c.post("/v1/chat/completions", json=body), 400)
        assert err["param"] == field and err["code"] == "unsupported_parameter", err
    broken = c.post("/v1/chat/completions", content=b'{"model": "mathagent",\n "messages": [}',
                    headers={"content-type": "application/json"})
    err = _error(broken, 400)
    assert err["param"] is None and err["code"] == "invalid_json" and "not valid JSON" in err["message"]
