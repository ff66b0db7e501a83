"""Tiny scripted model versions for ``mathagent bench swap`` and the hot-swap tests.

A tiny random Llama (two seeds = two versions) is taught in a few seconds to play one scripted
agent episode: write ```python\\nprint(D)\\n``` (the loop runs it in the real sandbox), then after
the injected output answer \\boxed{D}. So every episode is multi-turn (two generation requests
around a sandbox call), and the two versions give different greedy outputs (D differs), which
is what the swap checks need. The problem text varies freely (the script does not depend on it),
so every episode can carry a unique problem and be traced request by request.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from agent import prompts
from agent.modelstore import EMBEDDED_SPEC
from agent.observation import output_block
from agent.trajectory import Mode

WORDS = ["apple", "river", "seven", "train", "blue", "market", "pencil", "cloud", "number", "garden", "stone", "paper", "clock"]


def random_problem(rng: random.Random) -> str:
    a, b = rng.randint(1, 999), rng.randint(1, 999)
    return f"{' '.join(rng.choices(WORDS, k=rng.randint(1, 6)))}: what is {a} + {b}?"


def script(digit: str) -> tuple[str, str, str]:
    """(first model turn, injected observation, second model turn) of the scripted episode."""
    first = f"```python\nprint({digit})\n```\n"
    return first, output_block(digit, after_fence_stop=False), f"The answer is \\boxed{{{digit}}}."


def scripted_model(tokenizer: Any, digit: str, *, seed: int, steps: int = 60, max_turns: int = 2) -> Any:
    """A tiny Llama that plays :func:`script` greedily after any TIR prompt (trained here, CPU, seconds)."""
    import torch

    from agent.modelstore import tiny_random_model

    model = tiny_random_model(tokenizer, seed=seed)
    rng = random.Random(seed)
    first, obs, second = script(digit)
    eos = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))

    def encode(text: str) -> list[int]:
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]

    def example() -> tuple[list[int], list[int]]:
        user = prompts.user_message(random_problem(rng), Mode.tir, max_turns=max_turns)
        prompt = tokenizer.apply_chat_template(prompts.messages(user), add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        ids, targets = [int(i) for i in prompt], [0] * len(prompt)
        for text, learn in ((first, 1), (obs, 0), (second, 1)):
            piece = encode(text)
            ids += piece
            targets += [learn] * len(piece)
        ids.append(eos)
        targets.append(1)
        return ids, targets

    # the (tied) embedding is frozen: its dense gradient over the whole vocabulary is most of the cost
    model.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        batch = [example() for _ in range(4)]
        width = max(len(ids) for ids, _ in batch)
        x = torch.full((len(batch), width), tokenizer.pad_token_id or 0)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, (ids, targets) in enumerate(batch):
            x[i, : len(ids)] = torch.tensor(ids)
            # predict position j+1 from position j: a learned target at j+1 selects hidden state j
            mask[i, : len(ids) - 1] = torch.tensor(targets[1:], dtype=torch.bool)
        hidden = model.model(input_ids=x).last_hidden_state
        logits = model.lm_head(hidden[mask])  # only where a target is learned: the vocab is large
        labels = x[:, 1:][mask[:, :-1]]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def publish(registry: Any, model: Any, tokenizer: Any, version: str, tmp: Path, *, golden_problems: list[str],
            base_model: str = EMBEDDED_SPEC) -> Any:
    """Save ``model`` and publish it as ``version`` with golden prompts recorded from its own greedy output."""
    import asyncio

    from agent.engines.transformers_engine import TransformersEngine
    from trainer.gate import golden_prompts

    out = tmp / f"ckpt-{version}"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    class _P:  # the shape trainer.gate.golden_prompts reads (agent.datasets.Problem has more fields)
        def __init__(self, problem: str) -> None:
            self.problem, self.mode = problem, Mode.tir

    async def record() -> Any:
        engine = TransformersEngine(model, tokenizer, version)
        try:
            return await golden_prompts(engine, [_P(p) for p in golden_problems], n=len(golden_problems))  # type: ignore[misc]
        finally:
            await engine.aclose()

    golden = asyncio.run(record())
    return registry.publish(out, base_model=base_model, golden=golden, version=version)


def cached_scripted_model(tokenizer: Any, digit: str, *, seed: int, cache: Path) -> Any:
    """:func:`scripted_model`, trained once and kept under ``cache`` (training takes tens of seconds)."""
    import hashlib

    from agent.modelstore import load_model

    key = hashlib.sha256(f"{script(digit)}|{seed}|{len(tokenizer)}|{prompts.user_message('x', Mode.tir, max_turns=2)}"
                         .encode()).hexdigest()[:16]
    path = cache / f"scripted-{key}"
    if not (path / "config.json").is_file():
        model = scripted_model(tokenizer, digit, seed=seed)
        tmp = cache / f".scripted-{key}.{random.getrandbits(32):08x}"
        model.save_pretrained(tmp, safe_serialization=True)
        try:
            tmp.rename(path)
        except OSError:  # another process saved it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return load_model(path)
