"""The official ``openai`` client against the running gateway: models, chat completions
(streamed and not), errors, and the mathagent extras (trajectory id, model version)."""

from __future__ import annotations

import logging

import openai
import pytest
from support.gateway_stack import RunningApp


@pytest.fixture
def client(tiny_app: RunningApp) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_app.url}/v1", api_key="sk-test-openai", max_retries=0, timeout=120)


def test_models_list_has_the_stable_public_id(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["mathagent"]
    assert models[0].model_extra["version"] == "tiny-random-v1"
    assert client.models.retrieve("mathagent").id == "mathagent"


def test_non_streamed_chat_completion(client: openai.OpenAI, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mathagent.api"):
        raw = client.chat.completions.with_raw_response.create(
            model="mathagent",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 4 + 4?"}],
            extra_body={"frobnicate": True, "logit_bias": {}},  # unknown fields: logged and ignored
        )
    completion = raw.parse()
    assert raw.headers["x-model-version"] == "tiny-random-v1"
    assert completion.object == "chat.completion"
    assert completion.system_fingerprint == "tiny-random-v1"
    assert completion.model == "mathagent"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    tid = completion.model_extra["trajectory_id"]
    assert completion.id == f"chatcmpl-{tid}" and raw.headers["x-trajectory-id"] == tid
    assert any("frobnicate" in r.getMessage() for r in caplog.records)


def test_streamed_chat_completion_chunk_shapes(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="mathagent", messages=[{"role": "user", "content": "What is 5 * 5?"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason in ("stop", "length")
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens > 0
    assert chunks.index(finishing[0]) == len(chunks) - 2
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content  # the model's text arrived as deltas
    assert len({c.id for c in chunks}) == 1 and {c.system_fingerprint for c in chunks} == {"tiny-random-v1"}


def test_errors_have_the_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-nonexistent", messages=[{"role": "user", "content": "hi"}])
    assert nf.value.code == "model_not_found" and nf.value.param == "model"
    with pytest.raises(openai.UnprocessableEntityError) as empty:
        client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "   "}])
    assert empty.value.code == "empty_problem"
    with pytest.raises(openai.BadRequestError) as no_user:
        client.chat.completions.create(model="mathagent", messages=[{"role": "system", "content": "hi"}])
    assert no_user.value.code == "no_user_message"
    with pytest.raises(openai.NotFoundError):  # errors before the stream starts are plain HTTP errors
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], stream=True)


def test_server_errors_tell_the_client_not_to_retry(tiny_app: RunningApp) -> None:
    """A 5xx after a solve started must not make the openai client run the solve again."""
    solver = tiny_app.state.solver
    calls = 0

    async def broken(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    solver.solve, saved = broken, solver.solve
    try:
        retrying = openai.OpenAI(base_url=f"{tiny_app.url}/v1", api_key="sk-test", max_retries=2)
        with pytest.raises(openai.InternalServerError) as err:
            retrying.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "1+1?"}])
    finally:
        solver.solve = saved
    assert calls == 1
    assert err.value.response.headers["x-should-retry"] == "false"
    assert err.value.code == "internal_error" and "boom" not in err.value.message
