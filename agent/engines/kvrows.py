"""Per-row KV cache, row-wise attention and the batch-invariance probe of the transformers engine.

Why this is hand-written (and not ``model.generate`` with left padding): the greedy tokens of a
request must not depend on what else shares its batch. On CPU two things break that with the
usual padded batch:

- attention over a left-padded key range of another length rounds differently;
- the GEMM kernel MKL / oneDNN picks depends on the number of rows M (measured here: an fp32
  ``linear`` row differs bit-wise between M=1 and M=2, and again from M=16 on).

So every sequence keeps its own KV buffers (:class:`RowCache`, no padding ever), attention runs
per row (:func:`rowwise_attention`), and only the linear layers run batched, in row counts that
:func:`invariant_rows` verified to give bit-identical rows on this machine, thread count and
model shapes. A pass with fewer rows is padded with scratch rows so it goes through the same kernel
as a full batch. No library offers batch-invariant CPU decoding for transformers models; this is small.

Prefill runs in chunks of :data:`PREFILL_CHUNK` tokens at fixed absolute positions
([0, C), [C, 2C), ...), each chunk attending to the keys cached before it. The keys and values of
a full chunk are then a function of the tokens up to its end only (every chunk runs the same
kernels on the same shapes whatever follows it), so a later prompt that shares a prefix can start
from a stored copy (:class:`KVPrefix`) of those chunks and get bit-identical logits to a
prefill from scratch: prefix reuse never changes a result (:mod:`agent.engines.prefix_cache`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel

ATTN_IMPLEMENTATION = "mathagent_rowwise"

# Prefill chunk (tokens): the granularity of prefix reuse. Each forward pass streams all weights
# once, so small chunks cost more: a 192-token SmolLM2-135M prefill (CPU, 1 thread) took ~1.55 s in
# one pass, ~1.8 s in chunks of 64, ~2.1 s in chunks of 32 and ~2.8 s in chunks of 16. 64 keeps the
# overhead small and still covers the agent prompt's shared opening (67 tokens before the problem).
PREFILL_CHUNK = 64


def reusable_length(n_tokens: int, chunk: int = PREFILL_CHUNK) -> int:
    """How many leading positions of a prefilled prompt of ``n_tokens`` another prompt may reuse:
    its full chunks (the last, partial chunk ran on a shape that depends on the prompt's length)."""
    return n_tokens // chunk * chunk


class KVPrefix:
    """Keys and values of the first ``length`` positions of one sequence, per layer
    ([1, kv_heads, length, head_dim]); read-only once made."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys = keys
        self.values = values

    @property
    def length(self) -> int:
        return int(self.keys[-1].shape[2])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def truncated(self, length: int) -> KVPrefix:
        """The first ``length`` positions (views, no copy)."""
        return KVPrefix([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values])


class RowCache:
    """Keys and values of one sequence for every layer, in buffers that grow by doubling
    (an append copies only the new token, unlike ``torch.cat`` of a DynamicCache)."""

    def __init__(self, num_layers: int, reserve: int = 0) -> None:
        """``reserve``: the first buffer holds at least that many positions (a prefill reserves its
        whole prompt, so every chunk sees the same buffer whether or not it started from a prefix)."""
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers
        self.reserve = reserve

    @classmethod
    def from_prefix(cls, prefix: KVPrefix, reserve: int) -> RowCache:
        """A cache holding a copy of ``prefix`` in buffers of ``max(64, reserve)`` positions."""
        cache = cls(len(prefix.keys))
        n, cap = prefix.length, max(64, reserve, prefix.length)
        for layer, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
            kbuf = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            vbuf = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            kbuf[:, :, :n] = k
            vbuf[:, :, :n] = v
            cache.keys[layer], cache.values[layer], cache.lengths[layer] = kbuf, vbuf, n
        return cache

    def snapshot(self, length: int) -> KVPrefix:
        """A compact copy of the first ``length`` positions (independent of later appends)."""
        if not 0 < length <= self.length:
            raise ValueError(f"snapshot of {length} positions from a cache of {self.length}")
        keys = [k[:, :, :length].clone() for k in self.keys if k is not None]
        values = [v[:, :, :length].clone() for v in self.values if v is not None]
        return KVPrefix(keys, values)

    @property
    def length(self) -> int:
        """Tokens cached (equal across layers between forward passes)."""
        return self.lengths[-1]

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``key``/``value`` ([1, kv_heads, q, head_dim]); return views of all keys/values so far."""
        n, q = self.lengths[layer], key.shape[2]
        kbuf, vbuf = self.keys[layer], self.values[layer]
        if kbuf is None or vbuf is None or n + q > kbuf.shape[2]:
            cap = max(64, 2 * (n + q), self.reserve)
            new_k = key.new_empty(key.shape[0], key.shape[1], cap, key.shape[3])
            new_v = value.new_empty(value.shape[0], value.shape[1], cap, value.shape[3])
            if kbuf is not None and vbuf is not None:
                new_k[:, :, :n] = kbuf[:, :, :n]
                new_v[:, :, :n] = vbuf[:, :, :n]
            kbuf, vbuf = new_k, new_v
            self.keys[layer], self.values[layer] = kbuf, vbuf
        kbuf[:, :, n : n + q] = key
        vbuf[:, :, n : n + q] = value
        self.lengths[layer] = n + q
        return kbuf[:, :, : n + q], vbuf[:, :, : n + q]

    def clone(self) -> RowCache:
        """An independent copy with the same buffer capacity (so a copy computes exactly as the original)."""
        other = RowCache(len(self.lengths), self.reserve)
        other.keys = [None if k is None else k.clone() for k in self.keys]
        other.values = [None if v is None else v.clone() for v in self.values]
        other.lengths = list(self.lengths)
        return other


class BatchCache:
    """What the model sees as ``past_key_values`` for one forward pass over some rows.

    ``update`` is the only method transformers' Llama-style attention calls; it returns per-row
    lists that :func:`rowwise_attention` understands. A ``None`` row is a scratch row: its keys
    are used for this step only and never stored.
    """

    def __init__(self, rows: list[RowCache | None]) -> None:
        self.rows = rows

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for i, row in enumerate(self.rows):
            k, v = key_states[i : i + 1], value_states[i : i + 1]
            if row is not None:
                k, v = row.append(layer_idx, k, v)
            keys.append(k)
            values.append(v)
        return keys, values


def rowwise_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor | list[torch.Tensor],
    value: torch.Tensor | list[torch.Tensor],
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention one row at a time over that row's own keys (a transformers attention function).

    With ordinary tensors (the model used elsewhere, e.g. by a trainer with a DynamicCache) it
    falls back to transformers' SDPA implementation.
    """
    if isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)  # type: ignore[arg-type]
    outs = []
    q_len = query.shape[2]
    for i in range(query.shape[0]):
        k, v = key[i], value[i]
        k_len = k.shape[2]
        if q_len == 1 and k_len == 1:  # a scratch row (a real decode row has its prompt's keys): softmax of one key is 1
            out = v.repeat_interleave(query.shape[1] // v.shape[1], dim=1)
        elif q_len == 1 or k_len == q_len:  # a decode step, or a prefill chunk from position 0
            out = F.scaled_dot_product_attention(query[i : i + 1], k, v, is_causal=q_len > 1, scale=scaling, enable_gqa=True)
        else:  # a later prefill chunk: causal over the cached keys, aligned at the end (SDPA's is_causal aligns at the start)
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
            out = F.scaled_dot_product_attention(query[i : i + 1], k, v, attn_mask=mask, scale=scaling, enable_gqa=True)
        outs.append(out)
    return torch.cat(outs, dim=0).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, rowwise_attention)


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` computed as ``(weight @ x.T).T``: the rows of ``x`` become the GEMM's columns.

    Why: MKL's fp32 GEMM with the weight as the left operand streams it without repacking and
    treats the columns in blocks of 4, so at 1, 4 and 8 rows every row's result is bit-identical
    and a lone row runs at matrix-vector speed. ``F.linear`` puts the rows first: its kernel
    classes are 1 | 2-3 | 4-16, so a batch-invariant lone row had to run padded to 2 rows and 8
    rows took 3 passes (the timings are in the README, "Measurements behind the design").
    """
    flat = x.reshape(-1, x.shape[-1]).contiguous()  # the same memory layout at every row count
    out = torch.mm(weight, flat.t()).t().contiguous()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _row_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return row_linear(x, self.weight, self.bias)


def prepare_model(model: PreTrainedModel) -> PreTrainedModel:
    """Switch ``model`` (in place) to row-wise attention, :func:`row_linear` linear layers and eval mode."""
    model.eval()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        raise ValueError(f"{type(model).__name__} does not accept a custom attention implementation")
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.forward = types.MethodType(_row_linear_forward, mod)  # type: ignore[method-assign]
    return model


# A lone row is padded with scratch rows up to the smallest verified row count; more padding than
# this costs a lone row too much (a decode pass streams the weights once, so a few rows cost little).
MAX_PAD_ROWS = 8


@dataclass(frozen=True)
class DecodeRows:
    """The row counts a decode pass may run at (ascending): every row's result is bit-identical at
    each of them, whatever its position and its neighbours. Fewer live rows are padded with
    scratch rows up to the next allowed count."""

    sizes: tuple[int, ...]

    @property
    def max_rows(self) -> int:
        return self.sizes[-1]

    def passes(self, n: int) -> int:
        """Forward passes for ``n`` rows."""
        return -(-n // self.max_rows)

    def pad_to(self, n: int) -> int:
        """Rows a pass of ``n`` live rows runs at (``n`` <= :attr:`max_rows`)."""
        return next(m for m in self.sizes if m >= n)


@torch.inference_mode()
def invariant_rows(model: PreTrainedModel, limit: int, max_pad: int = MAX_PAD_ROWS) -> DecodeRows:
    """The row counts (<= ``limit``, the smallest <= ``max_pad``) at which every linear layer of
    ``model`` (computed by :func:`row_linear`) gives bit-identical rows whatever the count, a
    row's position and its neighbours.

    The GEMM kernel depends on the row count M in classes (with MKL on SmolLM2's shapes:
    M=1,4,8 | 2-3 | 12-16, and at 5-7 and 9-11 a row's result depends on its position), so a
    lone row runs alone, 2-4 rows run padded to 4 and 5-8 padded to 8. The classes depend on the
    kernel library, the CPU and ``torch.get_num_threads()``: this probe finds them, nothing assumes them.
    ``DecodeRows((1,))`` (no batching) when nothing larger qualifies.
    """
    weights: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            weights.setdefault((mod.out_features, mod.in_features, mod.weight.dtype), mod.weight)
    limit = max(1, limit)
    gen = torch.Generator().manual_seed(0)
    outs: list[dict[int, torch.Tensor]] = []
    positional: set[int] = set()  # row counts at which a row's result depends on its position
    for (_, n_in, dtype), weight in weights.items():
        x = torch.randn(limit, n_in, generator=gen).to(dtype)
        fwd = {m: row_linear(x[:m], weight) for m in range(1, limit + 1)}
        for m in range(2, limit + 1):
            if not torch.equal(row_linear(x[:m].flip(0), weight).flip(0), fwd[m]):
                positional.add(m)
        outs.append(fwd)
    classes: list[list[int]] = []  # row counts whose rows agree bit for bit
    for m in range(1, limit + 1):
        if m in positional:
            continue
        for members in classes:
            k = min(m, members[0])
            if all(torch.equal(fwd[m][:k], fwd[members[0]][:k]) for fwd in outs):
                members.append(m)
                break
        else:
            classes.append([m])
    usable = [c for c in classes if c[0] <= max_pad]
    best = max(usable, key=lambda c: (c[-1], -c[0]))  # the class of M=1 is always usable
    return DecodeRows(tuple(best))


@torch.inference_mode()
def prefill(
    model: PreTrainedModel, prompt_ids: list[int], prefix: KVPrefix | None = None, chunk: int = PREFILL_CHUNK
) -> tuple[RowCache, torch.Tensor]:
    """Run one prompt alone, chunk by chunk; return its cache and the float32 logits of the next token.

    ``prefix``: the stored keys/values of the prompt's first ``prefix.length`` tokens (a multiple
    of ``chunk``, less than the prompt's length); only the rest is computed, with the same result.
    """
    n = len(prompt_ids)
    reserve = 2 * n  # what a one-shot prefill's buffers held: decoding grows them the same way
    if prefix is None:
        start, cache = 0, RowCache(int(model.config.num_hidden_layers), reserve)
    else:
        start = prefix.length
        if start % chunk or not 0 < start < n:
            raise ValueError(f"a reused prefix of {start} tokens must be a multiple of {chunk} below {n}")
        cache = RowCache.from_prefix(prefix, reserve)
    logits: torch.Tensor | None = None
    for lo in range(start, n, chunk):
        hi = min(lo + chunk, n)
        out = model(
            input_ids=torch.tensor([prompt_ids[lo:hi]], dtype=torch.long),
            position_ids=torch.arange(lo, hi, dtype=torch.long).unsqueeze(0),
            past_key_values=BatchCache([cache]),
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits
    assert logits is not None
    return cache, logits[0, -1].float()


@torch.inference_mode()
def decode_step(model: PreTrainedModel, caches: list[RowCache], tokens: list[int], shape: DecodeRows) -> torch.Tensor:
    """Feed ``tokens[i]`` to row ``caches[i]`` (appending to it); return float32 next-token logits [rows, vocab].

    Rows run in balanced passes of at most ``shape.max_rows``, each padded with scratch rows to an
    allowed row count (see :func:`invariant_rows`), so a row computes exactly as in any batch.
    """
    per = -(-len(caches) // shape.passes(len(caches)))
    out: list[torch.Tensor] = []
    for start in range(0, len(caches), per):
        live = caches[start : start + per]
        rows: list[RowCache | None] = list(live)
        inputs = tokens[start : start + per]
        positions = [r.length for r in live]
        pad = shape.pad_to(len(rows)) - len(rows)
        if pad > 0:  # scratch rows: the first row's token at its position, attending only to itself
            rows += [None] * pad
            inputs = [*inputs, *[inputs[0]] * pad]
            positions = [*positions, *[positions[0]] * pad]
        logits = model(
            input_ids=torch.tensor(inputs, dtype=torch.long).unsqueeze(1),
            position_ids=torch.tensor(positions, dtype=torch.long).unsqueeze(1),
            past_key_values=BatchCache(rows),
            use_cache=True,
            logits_to_keep=1,
        ).logits
        out.append(logits[: len(live), -1].float())
    return torch.cat(out, dim=0)
