"""Exact attention over a packed row whose sequences may share a prefix, without a T x T mask.

A micro-batch is packed into ONE row (``trainer.examples.pack``). Through transformers' own
``sdpa`` path that row gets a block-diagonal ``T x T`` mask: attention compute and the mask's
memory grow with the square of the WHOLE row, although each token only attends within its
own sequence. The sequences of one training item (chosen and rejected, or SRPO's six) also
start with the same prompt, which ``sdpa`` would encode once per sequence.

Here the row is laid out as groups: a shared prefix once, then each sequence's own suffix
(positions continuing after the prefix). Attention runs per piece with
``F.scaled_dot_product_attention``: the prefix and the first suffix, which are contiguous, as
one causal sequence; every other suffix on ``prefix + suffix`` with a bottom-right-aligned
causal mask. The result equals attention over
each full sequence separately (tested), at the cost of sum(L^2) instead of T^2 and no
materialised row mask.

Hand-written because no library does variable-length attention on CPU: flash-attn and
``torch.nn.attention.varlen`` are CUDA-only, and flex-attention needs ``torch.compile``.
Registered under transformers' ``AttentionInterface`` so the model's own layers call it
(wrappers such as DDP and PEFT, and gradient checkpointing, see an ordinary forward).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

NAME = "mathagent_packed"


class Group(NamedTuple):
    """One shared prefix at ``[start, start + prefix)`` and its suffixes as ``(start, length)``."""

    start: int
    prefix: int
    suffixes: tuple[tuple[int, int], ...]


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    packed_groups: tuple[Group, ...] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query`` [1, Hq, T, D], ``key`` / ``value`` [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    if packed_groups is None:
        raise RuntimeError(f"attention {NAME!r} needs packed_groups (call trainer.examples.packed_logps)")
    if query.shape[0] != 1:
        raise RuntimeError(f"attention {NAME!r} expects one packed row, got a batch of {query.shape[0]}")
    gqa = query.shape[1] != key.shape[1]

    def causal(a: int, b: int) -> torch.Tensor:  # positions [a, b) as one causal sequence
        return F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa
        )

    pieces: list[torch.Tensor] = []
    for g in packed_groups:
        end = g.start + g.prefix
        # the prefix and the first suffix are contiguous: one ordinary causal sequence
        first = g.suffixes[0][1] if g.suffixes else 0
        if g.suffixes and g.suffixes[0][0] != end:
            raise RuntimeError("packed_groups: the first suffix must follow its prefix")
        if g.prefix + first:
            pieces.append(causal(g.start, end + first))
        pk, pv = key[:, :, g.start : end], value[:, :, g.start : end]
        for s, n in g.suffixes[1:]:
            if n == 0:
                continue
            k = torch.cat([pk, key[:, :, s : s + n]], dim=2)
            v = torch.cat([pv, value[:, :, s : s + n]], dim=2)
            pieces.append(
                F.scaled_dot_product_attention(
                    query[:, :, s : s + n], k, v, attn_mask=_suffix_mask(n, g.prefix, query.device), scale=scaling,
                    dropout_p=dropout, enable_gqa=gqa,
                )
            )
    out = torch.cat(pieces, dim=2)
    if out.shape[2] != query.shape[2]:
        raise RuntimeError(f"packed_groups cover {out.shape[2]} of {query.shape[2]} positions")
    return out.transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=512)
def _suffix_mask(n: int, prefix: int, device: torch.device) -> torch.Tensor:
    """Suffix row i sees the whole prefix and suffix tokens 0..i (bottom-right-aligned causal).

    Cached across calls, so never an inference tensor (the reference pass runs under
    ``torch.inference_mode``; training then reuses the mask under autograd)."""
    with torch.inference_mode(False):
        return torch.ones(n, prefix + n, dtype=torch.bool, device=device).tril(diagonal=prefix)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The row mask transformers would build: none (the groups define the attention)."""
    return None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, _no_mask)


def _config(model: Any) -> Any:
    inner = model
    while hasattr(inner, "module"):  # DDP and friends
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return inner.config


def is_active(model: Any) -> bool:
    return bool(_config(model)._attn_implementation == NAME)


@contextlib.contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Route ``model``'s attention through the packed implementation for the duration (nestable).

    Keep it active across backward when gradient checkpointing recomputes the layers.
    """
    config = _config(model)
    previous = config._attn_implementation
    if previous == NAME:
        yield
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
