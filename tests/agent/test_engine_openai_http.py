"""The vLLM HTTP engine against the local vLLM stand-in (:mod:`support.fake_vllm`).

Real vLLM cannot run on this project's machines (no GPU); the stand-in follows vLLM 0.33.0's
wire behaviour and really generates with the in-process engine on the tiny random model, so the
HTTP engine must return exactly the tokens the in-process engine returns."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
from engine_models import chat_prompts, lively_tiny_model
from support.fake_vllm import create_app, serve_in_thread

from agent.engines.base import (
    Engine,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    FinishReason,
    GenerationRequest,
)
from agent.engines.openai_http import OpenAIHTTPEngine
from agent.engines.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def local(tokenizer):
    eng = TransformersEngine(lively_tiny_model(tokenizer), tokenizer, "base", max_batch=8, threads=1)
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def server_url(local):
    with serve_in_thread(create_app(local, served_model_name="tiny")) as url:
        yield url


@pytest.fixture
async def http(server_url, tokenizer):
    eng = OpenAIHTTPEngine(server_url, tokenizer, model="tiny", version="base")
    yield eng
    await eng.aclose()


def req(prompt: list[int], n_tokens: int = 20, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt, max_new_tokens=n_tokens, **kw)


async def test_greedy_tokens_match_in_process(http, local):
    assert isinstance(http, Engine)
    prompts = chat_prompts(local, 4)
    over_http = await asyncio.gather(*[http.generate(req(p)) for p in prompts])
    for p, (remote,) in zip(prompts, over_http, strict=True):
        (mine,) = await local.generate(req(p))
        assert remote.token_ids == mine.token_ids
        assert remote.text == mine.text
        assert remote.finish_reason == mine.finish_reason == FinishReason.length
        assert remote.model_version == "default"  # vLLM's label until /update_weight_version


async def test_stop_strings_and_seeded_samples_match(http, local):
    prompt = chat_prompts(local, 3)[2]
    (free,) = await local.generate(req(prompt, 30))
    stop = free.text[10:14]
    (mine,) = await local.generate(req(prompt, 30, stop=[stop]))
    (remote,) = await http.generate(req(prompt, 30, stop=[stop]))
    assert mine.stop_string == stop and remote.stop_string == stop
    assert remote.token_ids == mine.token_ids and remote.text == mine.text
    assert remote.finish_reason == FinishReason.stop and not remote.eos

    sampled = req(prompt, 12, temperature=1.0, top_p=0.95, seed=5, n=3)
    remote_n = await http.generate(sampled)
    assert [c.token_ids for c in remote_n] == [c.token_ids for c in await local.generate(sampled)]


async def test_stream_concatenates_to_completion(http, local):
    prompt = chat_prompts(local, 2)[1]
    (full,) = await local.generate(req(prompt, 30))
    deltas = [d async for d in http.stream(req(prompt, 30))]
    assert len(deltas) > 1 and deltas[-1].done is not None
    assert [t for d in deltas for t in d.token_ids] == full.token_ids
    assert "".join(d.text for d in deltas) == full.text
    assert deltas[-1].done.token_ids == full.token_ids


async def test_closing_a_stream_stops_generation_on_the_server(http, local):
    prompt = chat_prompts(local, 1)[0]
    async with contextlib.aclosing(http.stream(req(prompt, 1500))) as stream:
        async for _ in stream:
            break
    deadline = time.monotonic() + 10
    while local.active_rows and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert local.active_rows == 0


async def test_errors_are_clear(http, tokenizer, local):
    with pytest.raises(EngineRequestError, match="unknown model version"):
        await http.generate(req([1, 2], version="nope"))
    http.add_version("ghost", "not-served")
    with pytest.raises(EngineRequestError, match="does not exist"):
        await http.generate(req([1, 2], version="ghost"))
    with pytest.raises(EngineRequestError, match="n == 1"):
        [d async for d in http.stream(req([1, 2], n=2))]
    down = OpenAIHTTPEngine("http://127.0.0.1:9", tokenizer, model="tiny", version="base")
    try:
        with pytest.raises(EngineUnavailableError, match="unreachable"):
            await down.generate(req([1, 2]))
    finally:
        await down.aclose()


async def test_api_key_guards_only_v1_paths(local, tokenizer):
    with serve_in_thread(create_app(local, served_model_name="tiny", api_key="s3cret")) as url:
        anonymous = OpenAIHTTPEngine(url, tokenizer, model="tiny", version="base")
        keyed = OpenAIHTTPEngine(url, tokenizer, model="tiny", version="base", api_key="s3cret")
        try:
            with pytest.raises(EngineError, match="401"):
                await anonymous.generate(req([1, 2], 2))
            await anonymous.update_weight_version("open-route")  # dev routes are not guarded
            (c,) = await keyed.generate(req([1, 2], 2))
            assert c.model_version == "open-route"
        finally:
            await anonymous.aclose()
            await keyed.aclose()


async def test_lora_hot_swap(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = lively_tiny_model(tokenizer)
    adapter = get_peft_model(
        lively_tiny_model(tokenizer),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    adapter.save_pretrained(tmp_path / "adapter-v2")
    engine = TransformersEngine(base, tokenizer, "base", threads=1)
    try:
        with serve_in_thread(create_app(engine, served_model_name="tiny")) as url:
            http = OpenAIHTTPEngine(url, tokenizer, model="tiny", version="base")
            try:
                prompt = chat_prompts(engine, 2)[1]
                (before,) = await http.generate(req(prompt))
                msg = await http.load_lora_adapter("policy-v2", tmp_path / "adapter-v2")
                assert msg == "Success: LoRA adapter 'policy-v2' added successfully."
                with pytest.raises(EngineRequestError, match="already been loaded"):
                    await http.load_lora_adapter("policy-v2", tmp_path / "adapter-v2")
                assert "policy-v2" in await http.served_models()
                http.add_version("v2", "policy-v2")
                on_lora, on_base = await asyncio.gather(http.generate(req(prompt, version="v2")), http.generate(req(prompt)))
                assert on_lora[0].model_version == "v2" and on_lora[0].token_ids != before.token_ids
                assert on_base[0].token_ids == before.token_ids
                await http.unload_lora_adapter("policy-v2")
                with pytest.raises(EngineRequestError, match="does not exist"):
                    await http.generate(req(prompt, version="v2"))
            finally:
                await http.aclose()
    finally:
        await engine.aclose()


async def test_full_weight_reload_with_pause_and_version_label(tokenizer, tmp_path):
    new_model = lively_tiny_model(tokenizer, seed=5)
    new_model.save_pretrained(tmp_path / "v2")
    engine = TransformersEngine(lively_tiny_model(tokenizer), tokenizer, "base", threads=1)
    reference = TransformersEngine(lively_tiny_model(tokenizer, seed=5), tokenizer, "ref", threads=1)
    try:
        with serve_in_thread(create_app(engine, served_model_name="tiny")) as url:
            http = OpenAIHTTPEngine(url, tokenizer, model="tiny", version="v1")
            try:
                await http.update_weight_version("v1")
                prompt = chat_prompts(engine, 3)[2]
                inflight = asyncio.create_task(http.generate(req(prompt, 40)))
                deadline = time.monotonic() + 10
                while not engine.active_rows and time.monotonic() < deadline:  # it reached the server
                    await asyncio.sleep(0.005)
                await http.pause(mode="wait", clear_cache=True)  # returns once in-flight work is done
                # The server finished the request before answering; the client may still be
                # reading the response, so await it rather than asserting it is already done.
                assert (await asyncio.wait_for(inflight, 10))[0].model_version == "v1"
                waiting = asyncio.create_task(http.generate(req(prompt)))  # held until resume
                await http.reload_weights(tmp_path / "v2")
                await http.update_weight_version("v2")
                await asyncio.sleep(0.1)
                assert not waiting.done()
                await http.resume()
                (after,) = await waiting
                (expected,) = await reference.generate(req(prompt))
                assert after.model_version == "v2"
                assert after.token_ids == expected.token_ids
            finally:
                await http.aclose()
    finally:
        await engine.aclose()
        await reference.aclose()


async def test_wire_format_follows_vllm(server_url, local):
    """The raw JSON: token ids, stop_reason and weight_versions exactly where vLLM puts them."""
    prompt = chat_prompts(local, 1)[0]
    async with httpx.AsyncClient(base_url=server_url) as client:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 5, "temperature": 0, "return_token_ids": True,
                "return_weight_versions": True}
        data = (await client.post("/v1/completions", json=body)).json()
        (choice,) = data["choices"]
        assert data["object"] == "text_completion" and data["usage"]["completion_tokens"] == 5
        assert choice["prompt_token_ids"] == prompt and len(choice["token_ids"]) == 5
        assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
        assert choice["weight_versions"] == [{"version": "default", "start": 0, "end": 5}]
        plain = (await client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2})).json()
        assert "weight_versions" not in plain["choices"][0] and "token_ids" not in plain["choices"][0]
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
            lines = [line async for line in resp.aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        assert "prompt_token_ids" in lines[0] and "weight_versions" in lines[-2]
        assert (await client.get("/health")).status_code == 200
