"""Per-row token sampling: greedy, temperature and nucleus (top-p), each row with its own
``torch.Generator`` so that a seeded request draws the same tokens alone or in any batch."""

from __future__ import annotations

import secrets

import torch


def row_generator(seed: int | None, index: int) -> torch.Generator:
    """The generator of sample ``index`` of a request: seeded from the request seed (samples of
    one request differ from each other), or from the OS when no seed was given."""
    gen = torch.Generator()
    if seed is None:
        gen.manual_seed(secrets.randbits(63))
    else:
        gen.manual_seed((seed * 1_000_003 + index) % (2**63))
    return gen


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id from a 1-D float32 logits row."""
    if temperature <= 0.0:
        return int(torch.argmax(logits))
    scaled = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        pick = torch.multinomial(torch.softmax(sorted_logits, dim=-1), 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))
