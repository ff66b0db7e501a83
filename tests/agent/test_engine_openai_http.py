"""The vLLM HTTP engine against a real vLLM server (the session's shared one, see tests/conftest.py).

The server serves the provisioned SmolLM2 in fp32, so greedy completions must equal the
in-process fp32 engine's token for token. The faults are made with the real server: bad weight
paths, a truncated adapter, a killed server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from agent.engines.base import (
    Engine,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    FinishReason,
    GenerationRequest,
)
from agent.engines.openai_http import OpenAIHTTPEngine, WeightReloadError
from agent.engines.transformers_engine import TransformersEngine

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 17 * 23?", "Solve for x: 3x + 5 = 20.", "What is the capital of France?", "Write a short poem about the sea."]


@pytest.fixture
async def http(vllm, tokenizer):
    eng = OpenAIHTTPEngine(vllm.url, tokenizer, model=vllm.served_name, version=vllm.version)
    yield eng
    await eng.aclose()


@pytest.fixture(scope="module")
def local(tokenizer):
    from support.paths import model_state_dir

    from agent import modelstore

    eng = TransformersEngine.from_path(modelstore.resolve("smollm2", model_state_dir()).path, "local", threads=1)
    yield eng
    asyncio.run(eng.aclose())


def req(prompt: list[int], n_tokens: int = 24, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt, max_new_tokens=n_tokens, **kw)


def chat(engine, question: str) -> list[int]:
    return engine.chat_prefix([{"role": "user", "content": question}])


async def running_requests(url: str) -> float:
    async with httpx.AsyncClient(base_url=url) as c:
        for line in (await c.get("/metrics")).text.splitlines():
            if line.startswith("vllm:num_requests_running"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("vLLM's /metrics has no vllm:num_requests_running")


def random_lora(model_dir: Path, dest: Path) -> Path:
    """A LoRA adapter for SmolLM2 with random (untrained, non-zero) weights, saved with peft."""
    import torch
    from peft import LoraConfig, get_peft_model

    from agent.modelstore import load_model

    torch.manual_seed(0)
    peft = get_peft_model(load_model(model_dir), LoraConfig(
        r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    peft.save_pretrained(dest)
    return dest


async def test_greedy_tokens_equal_the_in_process_fp32_engine(http, local, vllm):
    assert isinstance(http, Engine)
    prompts = [chat(http, q) for q in QUESTIONS]
    over_http = await asyncio.gather(*[http.generate(req(p)) for p in prompts])
    for p, (remote,) in zip(prompts, over_http, strict=True):
        (mine,) = await local.generate(req(p))
        assert remote.token_ids == mine.token_ids
        assert remote.text == mine.text
        assert remote.finish_reason == mine.finish_reason
        assert remote.model_version == vllm.version  # the server's "default" label = the --model weights


async def test_eos_is_returned_as_a_token_and_ends_the_completion(http):
    (c,) = await http.generate(req(chat(http, "What is 2+3? Answer briefly."), 60))
    assert c.finish_reason == FinishReason.stop and c.eos and c.stop_string is None
    assert c.token_ids[-1] == http.tokenizer.eos_token_id
    assert c.text == http.tokenizer.decode(c.token_ids, skip_special_tokens=True)


async def test_stop_string_is_kept_with_its_reason(http, local):
    prompt = chat(http, QUESTIONS[3])
    (free,) = await http.generate(req(prompt, 30))
    stop = free.text[12:16]
    (remote,) = await http.generate(req(prompt, 30, stop=[stop]))
    (mine,) = await local.generate(req(prompt, 30, stop=[stop]))
    assert remote.finish_reason == FinishReason.stop and remote.stop_string == stop and not remote.eos
    assert remote.text.endswith(stop) and stop in http.decode(remote.token_ids)
    assert (remote.token_ids, remote.text) == (mine.token_ids, mine.text)


async def test_seeded_samples_repeat_alone_batched_and_with_n(http):
    prompt = chat(http, QUESTIONS[1])

    def others() -> list:
        return [http.generate(req(chat(http, f"Question {i}: tell me about {i} cats"), 20, temperature=1.0)) for i in range(6)]

    sampled = req(prompt, 12, temperature=1.0, top_p=0.95, seed=5, n=3)
    alone = [c.token_ids for c in await http.generate(sampled)]
    assert len(set(map(tuple, alone))) == 3  # the n samples differ from each other
    batched, *_ = await asyncio.gather(http.generate(sampled), *others())
    assert [c.token_ids for c in batched] == alone


async def test_stream_concatenates_to_the_completion(http):
    prompt = chat(http, QUESTIONS[3])
    (full,) = await http.generate(req(prompt, 30))
    deltas = [d async for d in http.stream(req(prompt, 30))]
    assert len(deltas) > 1 and deltas[-1].done is not None
    assert [t for d in deltas for t in d.token_ids] == full.token_ids
    assert "".join(d.text for d in deltas) == full.text
    assert deltas[-1].done.token_ids == full.token_ids and deltas[-1].done.model_version == full.model_version


async def test_closing_a_stream_aborts_it_on_the_server(http, vllm):
    async with contextlib.aclosing(http.stream(req(chat(http, "Write a long story."), 2000))) as stream:
        async for _ in stream:
            break
    deadline = time.monotonic() + 15
    while await running_requests(vllm.url) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await running_requests(vllm.url) == 0


async def test_errors_are_mapped(http, tokenizer, vllm):
    with pytest.raises(EngineRequestError, match="unknown model version"):
        await http.generate(req([1, 2], version="nope"))
    with pytest.raises(EngineRequestError, match="n == 1"):
        [d async for d in http.stream(req([1, 2], n=2, temperature=1.0))]
    http.add_version("ghost", "adapter-never-loaded")
    with pytest.raises(EngineRequestError, match=r"404.*does not exist"):
        await http.generate(req([1, 2], version="ghost"))
    with pytest.raises(EngineRequestError, match=r"400.*maximum model length"):
        await http.generate(req([5] * 5000, 1))
    with pytest.raises(EngineRequestError, match="n must be 1 when using greedy"):
        await http.generate(req([1, 2], n=2))
    down = OpenAIHTTPEngine("http://127.0.0.1:9", tokenizer, model=vllm.served_name, version="v")
    try:
        with pytest.raises(EngineUnavailableError, match="unreachable"):
            await down.generate(req([1, 2]))
    finally:
        await down.aclose()


async def test_weight_label_round_trip_and_reporting(http, vllm):
    prompt = chat(http, QUESTIONS[0])
    assert await http.weight_info() == "default"
    await http.update_weight_version("v-label-test")
    assert await http.weight_info() == "v-label-test"
    (c,) = await http.generate(req(prompt, 4))
    assert c.model_version == "v-label-test"  # what vLLM says, even though this engine asked for its base version
    async for d in http.stream(req(prompt, 4)):
        if d.done is not None:
            assert d.done.model_version == "v-label-test"
    await http.update_weight_version("default")
    assert (await http.generate(req(prompt, 4)))[0].model_version == vllm.version


async def test_lora_adapter_changes_then_unload_restores_greedy_output(http, vllm, tmp_path):
    prompt = chat(http, QUESTIONS[2])
    (before,) = await http.generate(req(prompt))
    adapter = random_lora(vllm.model_dir, tmp_path / "adapter")
    msg = await http.load_lora_adapter("policy-a1", adapter)
    assert msg == "Success: LoRA adapter 'policy-a1' added successfully."
    assert "policy-a1" in await http.served_models()
    with pytest.raises(EngineRequestError, match="already been loaded"):
        await http.load_lora_adapter("policy-a1", adapter)
    http.add_version("v-lora", "policy-a1")
    on_lora, on_base = await asyncio.gather(http.generate(req(prompt, version="v-lora")), http.generate(req(prompt)))
    assert on_lora[0].token_ids != before.token_ids and on_lora[0].model_version == "v-lora"
    assert on_base[0].token_ids == before.token_ids

    with pytest.raises(EngineRequestError, match=r"404.*No adapter found"):
        await http.load_lora_adapter("policy-missing", tmp_path / "no-such-adapter")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapter, corrupt)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EngineError, match=r"500.*deserializing header"):
        await http.load_lora_adapter("policy-corrupt", corrupt)
    assert (await http.generate(req(prompt, version="v-lora")))[0].token_ids == on_lora[0].token_ids

    await http.unload_lora_adapter("policy-a1")
    with pytest.raises(EngineRequestError, match="404"):
        await http.generate(req(prompt, version="v-lora"))
    with pytest.raises(EngineRequestError, match="cannot be found"):
        await http.unload_lora_adapter("policy-a1")
    assert (await http.generate(req(prompt)))[0].token_ids == before.token_ids


async def test_full_reload_pause_resume_and_bad_paths(http, vllm, tmp_path):
    """pause(wait) drains, reload replaces the weights, the label names them; a missing or corrupt
    checkpoint raises, and reloading the previous weights (still paused) brings them back exactly."""
    import torch

    from agent.modelstore import load_model

    prompt = chat(http, QUESTIONS[2])
    (before,) = await http.generate(req(prompt))
    model = load_model(vllm.model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.add_(torch.randn_like(p) * p.std() * 0.3)
    model.save_pretrained(tmp_path / "perturbed")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(vllm.model_dir / "config.json", corrupt)
    data = (vllm.model_dir / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])

    inflight = asyncio.create_task(http.generate(req(chat(http, "Write a long story."), 40)))
    deadline = time.monotonic() + 30
    while not await running_requests(vllm.url) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await http.pause("wait")  # returns once the in-flight request has finished
    (drained,) = await asyncio.wait_for(inflight, 10)
    assert drained.token_ids and drained.model_version == vllm.version
    assert await http.is_paused()
    waiting = asyncio.create_task(http.generate(req(prompt)))  # held until resume
    await http.reload_weights(tmp_path / "perturbed")
    await http.update_weight_version("v-perturbed")
    assert await http.reset_prefix_cache()
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await http.resume()
    (after,) = await waiting
    assert after.model_version == "v-perturbed" and after.token_ids != before.token_ids

    await http.pause("wait")
    for bad in (tmp_path / "missing", corrupt):
        with pytest.raises(WeightReloadError, match=f"reload_weights\\({bad}\\) failed"):
            await http.reload_weights(bad)
        assert await http.is_paused()
    await http.reload_weights(tmp_path / "perturbed")  # the previous weights: the model is whole again
    await http.reset_prefix_cache()
    await http.resume()
    assert (await http.generate(req(prompt)))[0].token_ids == after.token_ids

    await http.pause("wait")
    await http.reload_weights(vllm.model_dir)
    await http.update_weight_version("default")
    await http.reset_prefix_cache()
    await http.resume()
    (back,) = await http.generate(req(prompt))
    assert back.token_ids == before.token_ids and back.model_version == vllm.version


async def test_killed_server_is_unavailable_and_its_processes_are_reaped(http, vllm):
    """Last in this module: it kills the shared server (the next test asking for one starts a new one)."""
    prompt = chat(http, "Write a long story.")
    plain = asyncio.create_task(http.generate(req(prompt, 1500)))

    async def consume() -> int:
        n = 0
        async for _ in http.stream(req(prompt, 1500)):
            n += 1
        return n

    streamed = asyncio.create_task(consume())
    deadline = time.monotonic() + 60
    while await running_requests(vllm.url) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    pgid = vllm.server.proc.pid
    vllm.server.kill_leader()  # SIGKILL the API server alone
    for task in (plain, streamed):
        with pytest.raises(EngineUnavailableError):
            await asyncio.wait_for(task, 30)
    with pytest.raises(EngineUnavailableError, match="unreachable"):
        await http.generate(req(prompt, 2))
    os.killpg(pgid, 0)  # its engine processes outlive it...
    vllm.server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # ...until stop() takes down the whole group
