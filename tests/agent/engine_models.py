"""Models for the engine tests: the tiny random Llama of ``agent.modelstore`` with its layer
weights re-drawn at a larger scale, so that greedy decoding produces varied text (at the default
init scale the tied embeddings make it repeat the last prompt token, which would let a
batching bug pass unnoticed)."""

from __future__ import annotations

import torch

from agent.modelstore import tiny_random_model


def lively_tiny_model(tokenizer, seed: int = 1, std: float = 0.3):
    model = tiny_random_model(tokenizer, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def chat_prompts(engine, count: int) -> list[list[int]]:
    """``count`` chat prompts of different lengths."""
    return [
        engine.chat_prefix([{"role": "user", "content": f"Problem {i}: what is {i} + {3 * i}?" + " Explain." * i}])
        for i in range(count)
    ]
