"""Client libraries nobody here wrote, unmodified, against the running gateway: the official
``openai`` client (sync and async), ``langchain-openai`` and ``litellm``. Each one: streaming with
usage, ``max_tokens`` (finish reason ``length``), ``n=2``, a bad value (400), a wrong model (404),
and a two-turn conversation whose second turn is built on the first (its episode's prompt holds
the first question and answer)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import openai
import pytest
from support.gateway_stack import RunningApp

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no download of its price list

FIRST = "What is 17 * 23?"
FOLLOW_UP = "Now double it."


def _prompt_text(app: RunningApp, trajectory_id: str) -> str:
    with app.client() as c:
        traj = c.get(f"/v1/trajectories/{trajectory_id}").json()["trajectory"]
    assert traj["problem"] == FOLLOW_UP and traj["context_messages"] == 2
    return str(traj["segments"][0]["text"])


def _assert_builds_on(app: RunningApp, trajectory_id: str, first_answer: str) -> None:
    """The follow-up's prompt: the first question, then the first answer (counted in
    context_messages; its exact tokens are checked in test_api_openai), then the follow-up."""
    text = _prompt_text(app, trajectory_id)
    assert FIRST in text and text.index(FIRST) < text.index(FOLLOW_UP)
    assert len(text) > len(FIRST) + len(FOLLOW_UP) + len(first_answer) // 2


# ---------------------------------------------------------------- openai


def test_openai_async_client(tiny_app: RunningApp) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=f"{tiny_app.url}/v1", api_key="sk-test", max_retries=0, timeout=120)
        stream = await client.chat.completions.create(model="mathagent", stream=True, max_tokens=4,
                                                      stream_options={"include_usage": True},
                                                      messages=[{"role": "user", "content": FIRST}])
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 4
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
        first = await client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": FIRST}])
        answer = first.choices[0].message.content or ""
        second = await client.chat.completions.create(model="mathagent", messages=[
            {"role": "user", "content": FIRST}, {"role": "assistant", "content": answer},
            {"role": "user", "content": FOLLOW_UP}])
        _assert_builds_on(tiny_app, second.model_extra["trajectory_id"], answer)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="mathagent", top_p=7, messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        await client.close()

    asyncio.run(run())


# ---------------------------------------------------------------- langchain-openai


@pytest.fixture
def chat_model(tiny_app: RunningApp) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=f"{tiny_app.url}/v1", api_key="sk-test", model="mathagent", max_retries=0,
                      timeout=120)


def test_langchain_invoke_stream_and_usage(chat_model: Any) -> None:
    reply = chat_model.invoke(FIRST)
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata["output_tokens"] > 0
    assert reply.response_metadata["system_fingerprint"] == "tiny-random-v1"
    chunks = list(chat_model.stream(FIRST, stream_usage=True))
    total = chunks[0]
    for ch in chunks[1:]:
        total = total + ch
    assert total.content and total.usage_metadata["output_tokens"] > 0


def test_langchain_max_tokens_n_and_errors(chat_model: Any) -> None:
    import openai as oa
    from langchain_core.messages import HumanMessage

    short = chat_model.bind(max_tokens=3).invoke(FIRST)
    assert short.response_metadata["finish_reason"] == "length" and short.usage_metadata["output_tokens"] <= 3
    two = chat_model.model_copy(update={"n": 2, "temperature": 1.0}).generate([[HumanMessage(content="Pick a number.")]])
    assert len(two.generations[0]) == 2
    with pytest.raises(oa.BadRequestError):
        chat_model.bind(temperature=9).invoke(FIRST)
    with pytest.raises(oa.NotFoundError):
        chat_model.model_copy(update={"model_name": "no-such-model"}).invoke(FIRST)


def test_langchain_two_turn_conversation(chat_model: Any, tiny_app: RunningApp) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    first = chat_model.invoke([HumanMessage(content=FIRST)])
    second = chat_model.invoke([HumanMessage(content=FIRST), AIMessage(content=first.content),
                                HumanMessage(content=FOLLOW_UP)])
    tid = (second.response_metadata.get("id") or second.id).removeprefix("chatcmpl-")
    _assert_builds_on(tiny_app, tid, first.content)


# ---------------------------------------------------------------- litellm


@pytest.fixture
def lite(tiny_app: RunningApp) -> dict[str, Any]:
    return {"model": "openai/mathagent", "api_base": f"{tiny_app.url}/v1", "api_key": "sk-test", "num_retries": 0,
            "timeout": 120}


def test_litellm_completion_stream_and_usage(lite: dict[str, Any]) -> None:
    import litellm

    r = litellm.completion(messages=[{"role": "user", "content": FIRST}], **lite)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(litellm.completion(messages=[{"role": "user", "content": FIRST}], stream=True,
                                     stream_options={"include_usage": True}, **lite))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage and usage[-1].completion_tokens > 0


def test_litellm_max_tokens_n_and_errors(lite: dict[str, Any]) -> None:
    import litellm

    short = litellm.completion(messages=[{"role": "user", "content": FIRST}], max_tokens=3, **lite)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens <= 3
    two = litellm.completion(messages=[{"role": "user", "content": "Pick a number."}], n=2, temperature=1.0, **lite)
    assert len(two.choices) == 2
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(messages=[{"role": "user", "content": FIRST}], temperature=9, **lite)
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(messages=[{"role": "user", "content": FIRST}], **{**lite, "model": "openai/no-such-model"})


def test_litellm_two_turn_conversation(lite: dict[str, Any], tiny_app: RunningApp) -> None:
    import litellm

    first = litellm.completion(messages=[{"role": "user", "content": FIRST}], **lite)
    answer = first.choices[0].message.content
    second = litellm.completion(messages=[{"role": "user", "content": FIRST}, {"role": "assistant", "content": answer},
                                          {"role": "user", "content": FOLLOW_UP}], **lite)
    tid = getattr(second, "trajectory_id", None) or second.id.removeprefix("chatcmpl-")
    _assert_builds_on(tiny_app, tid, answer)
