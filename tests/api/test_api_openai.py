"""The official ``openai`` client against the running gateway: models, chat completions
(streamed and not), conversations, limits, errors, and the mathagent extras (trajectory id,
model version)."""

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
    assert [m.id for m in models] == ["mathagent", "mathagent-plain"]
    assert {m.model_extra["version"] for m in models} == {"tiny-random-v1"}
    assert client.models.retrieve("mathagent").id == "mathagent"
    assert client.models.retrieve("mathagent-plain").id == "mathagent-plain"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


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
    assert completion.model_extra["feedback_token"]  # the solver's proof for trusted feedback (issue 19)
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
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "   "}])
    assert empty.value.code == "empty_problem" and empty.value.param == "messages[0].content"
    with pytest.raises(openai.BadRequestError) as no_user:
        client.chat.completions.create(model="mathagent", messages=[{"role": "system", "content": "hi"}])
    assert no_user.value.code == "no_user_message" and no_user.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "1+1"}], temperature=5)
    assert hot.value.param == "temperature" and hot.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "1+1"}], tools=[
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}])
    assert tools.value.param == "tools" and tools.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as image:
        client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is shown?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}])
    assert image.value.param == "messages[0].content[1].type"
    with pytest.raises(openai.BadRequestError) as role:
        client.chat.completions.create(model="mathagent", messages=[{"role": "wizard", "content": "1+1"}])  # type: ignore[misc]
    assert role.value.param == "messages[0].role"
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


def test_max_tokens_bounds_the_reply(client: openai.OpenAI) -> None:
    for kw in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        r = client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "Count to 100."}],
                                           **kw)  # type: ignore[arg-type]
        assert r.usage is not None and r.usage.completion_tokens <= 3
        assert r.choices[0].finish_reason == "length", r.choices[0]
        traj = r.model_extra["trajectory_id"]
        assert traj
    plain = client.chat.completions.create(model="mathagent-plain", max_tokens=2,
                                           messages=[{"role": "user", "content": "Count to 100."}])
    assert plain.usage is not None and plain.usage.completion_tokens <= 2
    assert plain.choices[0].finish_reason == "length"


def test_n_gives_n_choices_and_the_vote(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="mathagent", n=2, temperature=1.0, seed=5,
                                       messages=[{"role": "user", "content": "Pick a number."}])
    assert [c.index for c in r.choices] == [0, 1]
    ids = [c.model_extra["trajectory_id"] for c in r.choices]
    assert len(set(ids)) == 2 and r.model_extra["trajectory_id"] in ids
    assert r.model_extra["vote_shares"] is not None or r.model_extra["answer"] is None
    stream = client.chat.completions.create(model="mathagent", n=2, temperature=1.0, seed=5, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Pick a number."}])
    chunks = list(stream)
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model="mathagent", n=100, messages=[{"role": "user", "content": "1+1"}])
    assert too_many.value.param == "n"


def test_a_follow_up_sees_the_conversation(client: openai.OpenAI, tiny_app: RunningApp, tokenizer) -> None:
    """The second turn's episode sees the system prompt, the first question and the first answer
    (with its blocks), then the follow-up; its trajectory holds exactly those tokens, and is kept
    out of training (its problem alone is no problem)."""
    first_q = {"role": "user", "content": "What is 17 * 23?"}
    first = client.chat.completions.create(model="mathagent", messages=[
        {"role": "system", "content": "Talk like a pirate."}, first_q])
    answer = first.choices[0].message.content or ""
    follow = [{"role": "system", "content": "Talk like a pirate."}, first_q, {"role": "assistant", "content": answer},
              {"role": "user", "content": "Now double it."}]
    second = client.chat.completions.create(model="mathagent", messages=follow)  # type: ignore[arg-type]
    with tiny_app.client() as c:
        traj = c.get(f"/v1/trajectories/{second.model_extra['trajectory_id']}").json()["trajectory"]
    from agent import prompts

    expected = tokenizer.apply_chat_template(
        prompts.messages(prompts.user_message("Now double it.", "tir", max_turns=tiny_app.state.settings.max_turns),
                         system="Talk like a pirate.", history=[("user", "What is 17 * 23?"), ("assistant", answer)]),
        add_generation_prompt=True, tokenize=True, return_dict=False)
    prompt = traj["segments"][0]
    assert prompt["kind"] == "prompt" and prompt["token_ids"] == list(expected)
    assert "pirate" in prompt["text"] and "17 * 23" in prompt["text"] and "Now double it." in prompt["text"]
    assert traj["problem"] == "Now double it." and traj["context_messages"] == 3
    assert second.usage is not None and second.usage.prompt_tokens >= len(expected)


def test_the_oldest_turns_go_first_when_the_context_is_too_long(client: openai.OpenAI, tiny_app: RunningApp) -> None:
    s = tiny_app.state.settings
    filler = "lorem ipsum dolor sit amet " * 40  # about 200 tokens a turn
    history = []
    for i in range(8):
        history += [{"role": "user", "content": f"question {i}: {filler}"}, {"role": "assistant", "content": f"answer {i}"}]
    r = client.chat.completions.create(model="mathagent", messages=[*history, {"role": "user", "content": "And now?"}])  # type: ignore[arg-type]
    with tiny_app.client() as c:
        traj = c.get(f"/v1/trajectories/{r.model_extra['trajectory_id']}").json()["trajectory"]
    prompt = traj["segments"][0]
    assert len(prompt["token_ids"]) <= s.max_total_tokens - min(s.max_new_tokens, s.max_total_tokens // 2)
    assert "question 7" in prompt["text"] and "question 0" not in prompt["text"]  # the newest kept, the oldest dropped
    assert 0 < traj["context_messages"] < len(history)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="mathagent", messages=[{"role": "system", "content": filler * 4},
                                                                    {"role": "user", "content": "hi"}])
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "messages"


def test_invalid_json_numbers_and_syntax_are_400(tiny_app: RunningApp) -> None:
    with tiny_app.client() as c:
        for raw, param in ((b'{"model": "mathagent", "temperature": NaN, "messages": [{"role": "user", "content": "1"}]}',
                            "temperature"),
                           (b'{"model": "mathagent", "max_tokens": Infinity, "messages": [{"role": "user", "content": "1"}]}', "max_tokens"),
                           (b'{"model": "mathagent", "messages": [', None)):
            r = c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param, err
