"""Prompt-prefix KV reuse of the in-process engine: a prefill that starts from a stored prefix gives
bit-identical logits and tokens (chunked prefill makes a full chunk's keys/values depend on the
tokens alone), the next turn of a conversation hits the store, the store keeps its byte bound, and
entries never outlive their model version or come from a request that was never prefilled."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from engine_models import lively_tiny_model

from agent import prompts as agent_prompts
from agent.engines.base import GenerationRequest
from agent.engines.kvrows import (
    PREFILL_CHUNK,
    decode_step,
    invariant_rows,
    prefill,
    prepare_model,
    reusable_length,
)
from agent.engines.prefix_cache import PrefixStore
from agent.engines.transformers_engine import TransformersEngine

C = PREFILL_CHUNK


def words(tokenizer, text: str, n: int) -> list[int]:
    ids = tokenizer.encode(text * (1 + n // 2), add_special_tokens=False)[:n]
    assert len(ids) == n
    return ids


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.set_num_threads(1)
    return prepare_model(lively_tiny_model(tokenizer))


def test_prefill_from_a_stored_prefix_is_bit_identical(model, tokenizer):
    shared = words(tokenizer, "Solve the problem below with Python. ", 2 * C + 5)
    first = shared + words(tokenizer, " Gus has 7 cards.", 40)
    second = shared + words(tokenizer, " Chen has 44 apples and eats 9 of them.", 3 * C + 7)
    cache, _ = prefill(model, first)
    stored = cache.snapshot(reusable_length(len(first)))
    prefix = stored.truncated(reusable_length(len(shared)))
    assert prefix.length == 2 * C

    fresh, fresh_logits = prefill(model, second)
    reused, reused_logits = prefill(model, second, prefix)
    # chunked prefill computes what one pass over the whole prompt does (different GEMM shapes round
    # differently, so close, not bit-equal); this checks the causal mask of the later chunks
    _, one_pass_logits = prefill(model, second, chunk=len(second))
    torch.testing.assert_close(fresh_logits, one_pass_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(reused_logits, fresh_logits)
    assert reused.length == fresh.length == len(second)
    for a, b in zip(fresh.keys + fresh.values, reused.keys + reused.values, strict=True):
        assert a is not None and b is not None
        assert torch.equal(a[:, :, : len(second)], b[:, :, : len(second)])
    # decoding on from either cache stays identical (same buffers, same kernels)
    shape = invariant_rows(model, 4)
    tokens = [int(fresh_logits.argmax())]
    for _ in range(6):
        a = decode_step(model, [fresh], tokens, shape)
        b = decode_step(model, [reused], tokens, shape)
        assert torch.equal(a, b)
        tokens = [int(a[0].argmax())]
    # the test is not vacuous: the prefix really carries the first prompt's context
    other_first = words(tokenizer, "Entirely different opening text here. ", 2 * C + 5) + second[2 * C + 5 :]
    wrong_cache, _ = prefill(model, other_first)
    _, wrong_logits = prefill(model, second, wrong_cache.snapshot(2 * C))
    assert not torch.equal(wrong_logits, fresh_logits)


def test_prefill_rejects_a_misaligned_prefix(model, tokenizer):
    prompt = words(tokenizer, "one two three ", 2 * C)
    cache, _ = prefill(model, prompt)
    with pytest.raises(ValueError, match="multiple"):
        prefill(model, prompt, cache.snapshot(C + 3))
    with pytest.raises(ValueError, match="multiple"):  # nothing left to prefill: no logits
        prefill(model, prompt, cache.snapshot(2 * C))


def test_store_lookup_bound_and_eviction(model, tokenizer):
    a = words(tokenizer, "alpha beta gamma ", 3 * C + 10)
    b = words(tokenizer, "delta epsilon zeta ", 2 * C + 3)
    c = words(tokenizer, "eta theta iota ", 2 * C + 20)
    caches = {id(p): prefill(model, p)[0] for p in (a, b, c)}
    per_token = caches[id(a)].snapshot(1).nbytes
    owner, other_owner = object(), object()

    store = PrefixStore(max_bytes=per_token * 6 * C)  # a and b (5C tokens) fit, c (2C) more does not
    assert store.insert(owner, a, caches[id(a)])
    assert store.insert(owner, b, caches[id(b)])
    assert store.tokens() == [tuple(a[: 3 * C]), tuple(b[: 2 * C])]
    assert store.nbytes == per_token * 5 * C

    # longest whole-chunk prefix, of the same owner only, always short of the last prompt token
    hit = store.lookup(owner, [*a[: 2 * C + 1], 5, 6, 7])
    assert hit is not None and hit.length == 2 * C
    assert store.lookup(other_owner, a) is None
    exact = store.lookup(owner, a[: 3 * C])
    assert exact is not None and exact.length == 2 * C
    assert store.lookup(owner, a[: C - 1] + b) is None

    # b was used least recently: inserting c evicts b, and the bound holds
    assert store.insert(owner, c, caches[id(c)])
    assert store.tokens() == [tuple(a[: 3 * C]), tuple(c[: 2 * C])]
    assert store.nbytes <= store.max_bytes

    # a longer prompt that extends a stored one replaces it; a covered prompt adds nothing
    longer = a + words(tokenizer, "more text ", C)
    longer_cache, _ = prefill(model, longer)
    assert store.insert(owner, longer, longer_cache)
    assert store.tokens() == [tuple(c[: 2 * C]), tuple(longer[: 4 * C])]
    assert not store.insert(owner, a, caches[id(a)])
    assert store.nbytes <= store.max_bytes

    # an entry larger than the whole bound is never stored; a dead owner's never either
    tiny = PrefixStore(max_bytes=per_token * C)
    assert not tiny.insert(owner, a, caches[id(a)]) and len(tiny) == 0
    assert not store.insert(other_owner, b, caches[id(b)], alive=lambda: False)
    assert store.drop(owner) == 2 and len(store) == 0 and store.nbytes == 0


def episode_prompts(engine: TransformersEngine, count: int) -> list[list[int]]:
    """First-turn prompts of the agent (tool-integrated format): they share their opening."""
    problems = [f"Gus has {7 + i} cards. He buys {3 * i} more. How many cards does he have?" for i in range(count)]
    return [engine.chat_prefix(agent_prompts.messages(agent_prompts.user_message(p, "tir"))) for p in problems]


def greedy(prompt: list[int], n_tokens: int = 16, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt, max_new_tokens=n_tokens, **kw)


@pytest.fixture(scope="module")
def engines(tokenizer):
    """The same model behind an engine with the prefix store and one without."""
    model = lively_tiny_model(tokenizer)
    with_store = TransformersEngine(model, tokenizer, "tiny", max_batch=4, threads=1)
    without = TransformersEngine(lively_tiny_model(tokenizer), tokenizer, "tiny", max_batch=4, threads=1, prefix_cache_bytes=0)
    yield with_store, without
    for eng in (with_store, without):
        asyncio.run(eng.aclose())


async def test_second_turn_hits_and_matches_a_full_prefill(engines, tokenizer):
    eng, plain = engines
    eng.clear_prefix_cache()
    prompt = episode_prompts(eng, 3)[2]
    (turn1,) = await eng.generate(greedy(prompt, 20))
    hits, reused = eng.stats.prefix_hits, eng.stats.prefix_reused_tokens
    observation = tokenizer.encode("\n```output\n42\n```\n", add_special_tokens=False)
    turn2_prompt = prompt + turn1.token_ids + observation
    (turn2,) = await eng.generate(greedy(turn2_prompt, 24))
    assert eng.stats.prefix_hits == hits + 1
    assert eng.stats.prefix_reused_tokens - reused == reusable_length(len(prompt))

    (plain1,) = await plain.generate(greedy(prompt, 20))
    (plain2,) = await plain.generate(greedy(turn2_prompt, 24))
    assert plain.stats.prefix_hits == 0
    assert plain1.token_ids == turn1.token_ids
    assert turn2.token_ids == plain2.token_ids and turn2.text == plain2.text
    assert len(set(turn2.token_ids)) > 1  # the model does not write one constant token


async def test_concurrent_episodes_reuse_the_shared_opening(engines):
    eng, plain = engines
    eng.clear_prefix_cache()
    prompts = episode_prompts(eng, 4)
    hits = eng.stats.prefix_hits
    together = await asyncio.gather(*(eng.generate(greedy(p, 12)) for p in prompts))
    assert eng.stats.prefix_hits - hits == len(prompts) - 1  # every prompt after the first one
    alone = [(await plain.generate(greedy(p, 12)))[0] for p in prompts]
    assert [c[0].token_ids for c in together] == [c.token_ids for c in alone]


async def test_removed_version_entries_are_never_used(tokenizer):
    eng = TransformersEngine(lively_tiny_model(tokenizer, seed=1), tokenizer, "A", threads=1)
    try:
        prompt = episode_prompts(eng, 2)[1]
        eng.add_version("B", lively_tiny_model(tokenizer, seed=2))
        await eng.generate(greedy(prompt, 8, version="B"))
        assert len(eng.prefix_cache) == 1
        eng.remove_version("B")
        assert len(eng.prefix_cache) == 0
        # a different model under the old name must not start from B's keys/values
        eng.add_version("B", lively_tiny_model(tokenizer, seed=3))
        hits = eng.stats.prefix_hits
        (again,) = await eng.generate(greedy(prompt, 8, version="B"))
        assert eng.stats.prefix_hits == hits
        fresh = TransformersEngine(lively_tiny_model(tokenizer, seed=3), tokenizer, "B", threads=1, prefix_cache_bytes=0)
        try:
            (expected,) = await fresh.generate(greedy(prompt, 8))
        finally:
            await fresh.aclose()
        assert again.token_ids == expected.token_ids
    finally:
        await eng.aclose()


async def test_a_request_cancelled_before_its_prefill_is_not_stored(tokenizer):
    eng = TransformersEngine(lively_tiny_model(tokenizer), tokenizer, "tiny", max_batch=2, threads=1)
    try:
        busy_prompt, cancelled_prompt = episode_prompts(eng, 3)[1:]
        busy = asyncio.create_task(eng.generate(greedy(busy_prompt, 1500, temperature=1.0, seed=1, n=2)))
        while eng.stats.tokens_generated < 4:  # the batch is full: the next request has to wait
            await asyncio.sleep(0.005)
        waiting = asyncio.create_task(eng.generate(greedy(cancelled_prompt, 8)))
        await asyncio.sleep(0.05)
        assert eng.active_rows == 3
        waiting.cancel()
        busy.cancel()
        for task in (waiting, busy):
            with pytest.raises(asyncio.CancelledError):
                await task
        deadline = time.monotonic() + 10
        while eng.active_rows and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert eng.active_rows == 0
        stored = eng.prefix_cache.tokens()
        assert stored == [tuple(busy_prompt[: reusable_length(len(busy_prompt))])]  # only the prefilled one
        assert eng.stats.prefill_tokens == len(busy_prompt)
    finally:
        await eng.aclose()
