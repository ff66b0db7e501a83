"""The in-process transformers engine: batching that does not change results, sampling, stop
strings, eos, streaming, cancellation and version pinning. Fast tests use the tiny random Llama
(with the real SmolLM2 tokenizer); the slow test repeats the batching proof on real SmolLM2."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
import torch
from engine_models import chat_prompts, lively_tiny_model
from support.paths import model_state_dir

from agent.engines.base import Engine, EngineRequestError, FinishReason, GenerationRequest
from agent.engines.detok import IncrementalText
from agent.engines.kvrows import DecodeRows, decode_step, invariant_rows, prefill, prepare_model
from agent.engines.transformers_engine import TransformersEngine


def smollm2_path() -> Path:
    from agent.modelstore import resolve

    return resolve("smollm2", model_state_dir()).path


def assert_decode_logits_bit_identical(model, prompts: list[list[int]], steps: int, threads: int = 1) -> None:
    """Next-token logits of every row are bit-identical whether it decodes alone or with the others
    (a stronger check than equal greedy tokens: rounding differences rarely flip an argmax)."""
    torch.set_num_threads(threads)
    prepare_model(model)
    shape = invariant_rows(model, 8)
    assert shape.max_rows >= len(prompts), f"{shape}: the rows would not share one pass"

    def run(groups: list[list[int]]) -> dict[int, list[torch.Tensor]]:
        seen: dict[int, list[torch.Tensor]] = {}
        for group in groups:
            caches, tokens = [], []
            for i in group:
                cache, logits = prefill(model, prompts[i])
                caches.append(cache)
                tokens.append(int(logits.argmax()))
                seen[i] = [logits]
            for _ in range(steps):
                logits = decode_step(model, caches, tokens, shape)
                tokens = [int(x) for x in logits.argmax(-1)]
                for j, i in enumerate(group):
                    seen[i].append(logits[j])
        return seen

    alone = run([[i] for i in range(len(prompts))])
    together = run([list(range(len(prompts)))])
    for i in range(len(prompts)):
        for step, (a, b) in enumerate(zip(alone[i], together[i], strict=True)):
            assert torch.equal(a, b), f"row {i} step {step}: logits differ by {(a - b).abs().max().item()}"


def test_decode_logits_bit_identical_alone_or_batched(tokenizer):
    model = lively_tiny_model(tokenizer)
    prompts = [tokenizer.encode(f"Problem {i}: " + "seven times eight " * i, add_special_tokens=False) for i in range(5)]
    assert_decode_logits_bit_identical(model, prompts, steps=4)


@pytest.fixture(scope="module")
def engine(tokenizer):
    eng = TransformersEngine(lively_tiny_model(tokenizer), tokenizer, "tiny-v0", max_batch=8, threads=1)
    yield eng
    asyncio.run(eng.aclose())


def greedy(prompt: list[int], n_tokens: int = 24, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt, max_new_tokens=n_tokens, **kw)


async def wait_idle(engine: TransformersEngine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.active_rows and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert engine.active_rows == 0


def test_is_an_engine(engine):
    assert isinstance(engine, Engine)
    assert engine.model_version == "tiny-v0"


async def test_greedy_batched_equals_alone(engine):
    prompts = chat_prompts(engine, 6)
    alone = [(await engine.generate(greedy(p)))[0] for p in prompts]
    assert len({tuple(c.token_ids) for c in alone}) > 1  # the model does not write one constant text
    before = engine.stats.max_rows_in_step
    engine.stats.max_rows_in_step = 0

    async def late(p: list[int], delay: float):  # joins while the others are mid-generation
        await asyncio.sleep(delay)
        return await engine.generate(greedy(p))

    together = await asyncio.gather(*[late(p, 0.02 * (i % 3)) for i, p in enumerate(prompts)])
    assert engine.stats.max_rows_in_step >= 3, "the requests were not batched"
    engine.stats.max_rows_in_step = max(before, engine.stats.max_rows_in_step)
    for a, (b,) in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids
        assert b.text == a.text


async def test_seeded_sampling_same_alone_or_batched(engine):
    prompt = chat_prompts(engine, 1)[0]
    req = greedy(prompt, 20, temperature=1.0, top_p=0.9, seed=1234)
    (alone,) = await engine.generate(req)
    others = [greedy(p, 20, temperature=1.0, seed=i) for i, p in enumerate(chat_prompts(engine, 4))]
    results = await asyncio.gather(engine.generate(req), *[engine.generate(o) for o in others])
    assert results[0][0].token_ids == alone.token_ids
    (other_seed,) = await engine.generate(req.model_copy(update={"seed": 99}))
    assert other_seed.token_ids != alone.token_ids


async def test_n_samples(engine):
    prompt = chat_prompts(engine, 2)[1]
    req = greedy(prompt, 12, temperature=1.0, seed=7, n=4)
    first = await engine.generate(req)
    assert len(first) == 4
    assert len({tuple(c.token_ids) for c in first}) > 1  # the samples of one request differ
    assert [c.token_ids for c in await engine.generate(req)] == [c.token_ids for c in first]
    (one,) = await engine.generate(greedy(prompt, 12))
    many = await engine.generate(greedy(prompt, 12, n=3))
    assert all(c.token_ids == one.token_ids for c in many)  # greedy: every sample is the greedy path


async def test_logprobs_are_the_models_before_temperature(engine):
    """Asked for, each sampled token's log-probability under the model (raw, before temperature
    and top-p, as vLLM reports by default); not asked for, none."""
    prompt = chat_prompts(engine, 1)[0]
    (plain,) = await engine.generate(greedy(prompt, 10, temperature=1.5, top_p=0.9, seed=3))
    (c,) = await engine.generate(greedy(prompt, 10, temperature=1.5, top_p=0.9, seed=3, logprobs=True))
    assert plain.logprobs is None and c.token_ids == plain.token_ids  # asking changes nothing sampled
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    model = engine.model()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + c.token_ids])).logits[0].float()
    expected = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4), (c.logprobs, expected.tolist())


async def test_stop_string_cuts_right_after_completing_token(engine, tokenizer):
    prompt = chat_prompts(engine, 3)[2]
    (free,) = await engine.generate(greedy(prompt, 30))
    ids = free.token_ids
    prefixes = [tokenizer.decode(ids[: k + 1], skip_special_tokens=True) for k in range(len(ids))]
    # a stop string that starts inside token 5 and ends inside token 8 (or at its end)
    start = len(prefixes[4]) - 1 if len(prefixes[4]) > 0 else 0
    end = len(prefixes[7]) - (1 if len(prefixes[7]) - len(prefixes[6]) > 1 else 0)
    stop = free.text[start:end]
    assert stop
    first_end = free.text.find(stop) + len(stop)
    k = next(i for i, p in enumerate(prefixes) if len(p) >= first_end)
    (cut,) = await engine.generate(greedy(prompt, 30, stop=["never-produced-xyz", stop]))
    assert cut.finish_reason == FinishReason.stop
    assert cut.stop_string == stop
    assert cut.token_ids == ids[: k + 1]
    assert cut.text == free.text[:first_end]
    assert not cut.eos


def test_fence_stop_strings_on_real_tokens(tokenizer):
    """The loop's stop strings over real SmolLM2 tokens, pushed one at a time."""
    loop_stops = ["```output", "\n```\n"]
    cases = [
        ("```python\nprint(1)\n```\nmore", loop_stops, "\n```\n", "```python\nprint(1)\n```\n"),
        ("So we compute.\n```output\n2\n```", loop_stops, "```output", "So we compute.\n```output"),
        ("x\n```outputs", ["```out"], "```out", "x\n```out"),  # the completing token runs past it
    ]
    for text, stops, expect_stop, expect_text in cases:
        ids = tokenizer.encode(text, add_special_tokens=False)
        inc = IncrementalText(tokenizer, stops)
        used = 0
        for t in ids:
            inc.push(t, special=False)
            used += 1
            if inc.stop_string:
                break
        assert inc.stop_string == expect_stop
        assert inc.text == expect_text
        # the completing token is the last one consumed: without it the stop string is absent
        before = tokenizer.decode(ids[: used - 1], skip_special_tokens=True)
        assert expect_stop not in before
        assert inc.delta(final=True) == expect_text


async def test_eos_ends_and_is_kept(tokenizer):
    model = lively_tiny_model(tokenizer)
    eng = TransformersEngine(model, tokenizer, "eos-test", threads=1)
    try:
        prompt = chat_prompts(eng, 2)[1]
        (free,) = await eng.generate(greedy(prompt, 16))
        marker = free.token_ids[5]
        k = free.token_ids.index(marker)
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, marker]
        eng.add_version("eos-test-2", model)
        (ended,) = await eng.generate(greedy(prompt, 16, version="eos-test-2"))
        assert ended.eos and ended.finish_reason == FinishReason.stop
        assert ended.token_ids == free.token_ids[: k + 1]  # the eos id is part of the output
        assert ended.text == tokenizer.decode(free.token_ids[:k], skip_special_tokens=True)
        assert ended.model_version == "eos-test-2"
    finally:
        await eng.aclose()


async def test_stream_deltas_concatenate_to_completion(engine):
    prompt = chat_prompts(engine, 4)[3]
    (full,) = await engine.generate(greedy(prompt, 40))
    deltas = [d async for d in engine.stream(greedy(prompt, 40))]
    assert len(deltas) > 1
    assert all(d.done is None for d in deltas[:-1]) and deltas[-1].done is not None
    assert [t for d in deltas for t in d.token_ids] == full.token_ids
    assert "".join(d.text for d in deltas) == full.text == deltas[-1].done.text


async def test_closing_a_stream_frees_its_row(engine):
    await wait_idle(engine)
    prompt = chat_prompts(engine, 1)[0]
    async with contextlib.aclosing(engine.stream(greedy(prompt, 1500))) as stream:
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
    await wait_idle(engine, 5.0)
    produced = engine.stats.tokens_generated
    await asyncio.sleep(0.2)
    assert engine.stats.tokens_generated == produced  # nothing generates any more


async def test_cancelling_generate_frees_its_row(engine):
    await wait_idle(engine)
    start = engine.stats.tokens_generated
    task = asyncio.create_task(engine.generate(greedy(chat_prompts(engine, 1)[0], 1500)))
    while engine.stats.tokens_generated - start < 5:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(engine, 5.0)
    assert engine.stats.tokens_generated - start < 1500


async def test_version_pinning(tokenizer):
    eng = TransformersEngine(lively_tiny_model(tokenizer, seed=1), tokenizer, "A", threads=1)
    try:
        prompt = chat_prompts(eng, 2)[1]
        (on_a,) = await eng.generate(greedy(prompt, 16))
        eng.add_version("B", lively_tiny_model(tokenizer, seed=2))
        assert eng.model_version == "A"
        eng.set_active("B")
        assert eng.model_version == "B"
        pinned, active = await asyncio.gather(eng.generate(greedy(prompt, 16, version="A")), eng.generate(greedy(prompt, 16)))
        assert pinned[0].token_ids == on_a.token_ids and pinned[0].model_version == "A"
        assert active[0].model_version == "B" and active[0].token_ids != on_a.token_ids
        with pytest.raises(EngineRequestError):
            eng.remove_version("B")  # active
        eng.remove_version("A")
        with pytest.raises(EngineRequestError, match="unknown model version"):
            await eng.generate(greedy(prompt, 4, version="A"))
    finally:
        await eng.aclose()


async def test_bad_requests_are_clear_errors(engine):
    with pytest.raises(EngineRequestError, match="empty"):
        await engine.generate(GenerationRequest(prompt_ids=[]))
    with pytest.raises(EngineRequestError, match="n == 1"):
        [d async for d in engine.stream(GenerationRequest(prompt_ids=[1, 2], n=2))]
    with pytest.raises(EngineRequestError, match="vocabulary"):
        await engine.generate(GenerationRequest(prompt_ids=[10**9]))


@pytest.mark.slow
async def test_real_smollm2_batched_equals_alone_and_eos(tokenizer):
    eng = TransformersEngine.from_path(smollm2_path(), threads=1)
    try:
        questions = ["What is 2+3?", "Name a prime number above 10.", "Write 7*8 in words.", "Say hi."]
        prompts = [eng.chat_prefix([{"role": "user", "content": q}]) for q in questions]
        alone = [(await eng.generate(greedy(p, 32)))[0] for p in prompts]
        together = await asyncio.gather(*[eng.generate(greedy(p, 32)) for p in prompts])
        assert eng.stats.max_rows_in_step >= 2
        assert [c[0].token_ids for c in together] == [c.token_ids for c in alone]
        ended = [c for c in alone if c.eos]
        assert ended, "SmolLM2 ended no short answer with <|im_end|> within 32 tokens"
        assert all(c.token_ids[-1] == tokenizer.eos_token_id and "<|im_end|>" not in c.text for c in ended)
    finally:
        await eng.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_real_smollm2_decode_logits_bit_identical(tokenizer, threads):
    """Five rows in one padded pass vs each alone in a pass padded with scratch rows (the row
    counts differ, e.g. 5 vs 4 with one thread, 8 vs 4 with two)."""
    from agent.modelstore import load_model

    questions = ["What is 2+3?", "A prime above 10 is", "x = 7 * 8\nprint(x)", "Solve x^2 = 9.", "12 pens cost"]
    prompts = [tokenizer.encode(q, add_special_tokens=False) for q in questions]
    try:
        assert_decode_logits_bit_identical(load_model(smollm2_path()), prompts, steps=3, threads=threads)
    finally:
        torch.set_num_threads(1)


def test_decode_rows_padding_and_passes():
    shape = DecodeRows((4, 8, 12, 13, 14, 15, 16))
    assert [shape.pad_to(n) for n in (1, 4, 5, 8, 9, 13, 16)] == [4, 4, 8, 8, 12, 13, 16]
    assert [shape.passes(n) for n in (1, 16, 17, 33)] == [1, 1, 2, 3]
    with pytest.raises(StopIteration):
        shape.pad_to(17)


def test_invariant_rows_probe_finds_a_class_that_batches(tokenizer):
    """On the tiny model the probe finds row counts above 1 that share one kernel class, and each
    of them really gives the same rows as the smallest one (checked here on whole decode steps)."""
    model = prepare_model(lively_tiny_model(tokenizer))
    torch.set_num_threads(1)
    shape = invariant_rows(model, 8)
    assert shape.max_rows >= 2 and shape.sizes == tuple(sorted(shape.sizes))
    prompts = [tokenizer.encode(f"Case {i}: " + "nine " * (i + 1), add_special_tokens=False) for i in range(shape.max_rows)]
    caches = [prefill(model, p)[0] for p in prompts]
    tokens = [7] * len(prompts)
    together = decode_step(model, [c.clone() for c in caches], tokens, shape)
    for i, cache in enumerate(caches):
        assert torch.equal(decode_step(model, [cache.clone()], [7], shape)[0], together[i])
