"""Tokenised training sequences built from logged trajectories, and the padding-free packer.

The loss mask comes from the trajectory's segments (``model`` = 1, ``prompt`` and
``observation`` = 0), never from matching token ids: the model's own stop / end-of-turn tokens
are inside its ``model`` segments, so they are learned; the sandbox's injected output is not.

Packing: all sequences of a micro-batch are concatenated into ONE row (no padding) with
``position_ids`` restarting for each sequence; the sequences of one training item (chosen and
rejected share their prompt) store their common prefix once. ``trainer.attention`` computes
exact per-sequence attention over that layout without a row-sized mask. The LM head runs only
at positions whose next token is a model token (``logits_to_keep`` as an index tensor, which
skips prompts and observations) and turns them into label log-probs a chunk at a time, so the
vocabulary-sized logits are never held whole (``head_logps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch.utils.checkpoint import checkpoint

from agent.trajectory import SegmentKind, Trajectory
from trainer.attention import Group, is_active, packed_attention
from trainer.losses import token_logps


class Example(BaseModel):
    """One tokenised sequence: exact ids, a 0/1 loss mask over them, and the prompt length."""

    input_ids: list[int]
    loss_mask: list[int] = Field(description="1 on model tokens, 0 on prompt and observation tokens")
    prompt_len: int = Field(description="tokens before the first model token; truncation never cuts here")
    trajectory_id: str = ""

    @property
    def n_model_tokens(self) -> int:
        return sum(self.loss_mask)

    def __len__(self) -> int:
        return len(self.input_ids)

    def response(self) -> Example:
        """Only the part after the prompt (model turns and observations), for re-prompting."""
        return Example(
            input_ids=self.input_ids[self.prompt_len :],
            loss_mask=self.loss_mask[self.prompt_len :],
            prompt_len=0,
            trajectory_id=self.trajectory_id,
        )

    def with_prompt(self, prompt_ids: list[int]) -> Example:
        """This example's response after a different prompt (SRPO's revision prompts)."""
        resp = self.response()
        return Example(
            input_ids=list(prompt_ids) + resp.input_ids,
            loss_mask=[0] * len(prompt_ids) + resp.loss_mask,
            prompt_len=len(prompt_ids),
            trajectory_id=self.trajectory_id,
        )


def example_from_trajectory(traj: Trajectory) -> Example:
    """Input ids and loss mask exactly as logged; ``prompt_len`` counts the leading non-model tokens."""
    ids = traj.token_ids()
    mask = traj.model_mask()
    prompt_len = mask.index(1) if 1 in mask else len(ids)
    return Example(input_ids=ids, loss_mask=mask, prompt_len=prompt_len, trajectory_id=traj.id)


def truncate(example: Example, max_length: int) -> Example | None:
    """Cut the response's tail so the sequence fits ``max_length``; never cut inside the prompt.

    Returns None when nothing trainable would remain (the prompt alone fills the budget, or
    the kept part holds no model token).
    """
    if len(example) <= max_length:
        return example
    if example.prompt_len >= max_length:
        return None
    kept = Example(
        input_ids=example.input_ids[:max_length],
        loss_mask=example.loss_mask[:max_length],
        prompt_len=example.prompt_len,
        trajectory_id=example.trajectory_id,
    )
    return kept if kept.n_model_tokens > 0 else None


def segments_check(traj: Trajectory) -> str | None:
    """Why a trajectory cannot be trained on, or None: it needs model tokens and a prompt first."""
    if not traj.segments or traj.segments[0].kind is not SegmentKind.prompt:
        return "does not start with a prompt segment"
    if not any(s.kind is SegmentKind.model and s.token_ids for s in traj.segments):
        return "has no model tokens"
    return None


@dataclass
class PackedBatch:
    """Sequences packed into one row. ``keep`` are the row positions whose NEXT token is a model
    token of some sequence; ``labels[k]`` is that token and ``seq_index[k]`` its sequence. A
    position in a shared prefix appears once per sequence it scores for. ``groups`` is the
    layout ``trainer.attention`` needs."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    keep: torch.Tensor  # [K]
    labels: torch.Tensor  # [K]
    seq_index: torch.Tensor  # [K]
    n_model_tokens: torch.Tensor  # [n_sequences]
    n_sequences: int
    groups: tuple[Group, ...]
    n_sequence_tokens: int  # tokens of the sequences themselves (what an unshared, unpadded batch holds)

    @property
    def n_tokens(self) -> int:
        """Tokens in the row (shared prefixes counted once)."""
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.keep.to(device),
            self.labels.to(device),
            self.seq_index.to(device),
            self.n_model_tokens.to(device),
            self.n_sequences,
            self.groups,
            self.n_sequence_tokens,
        )


def _shared_prefix(examples: list[Example]) -> int:
    """Length of the longest prefix (ids and mask) common to all ``examples``."""
    first = examples[0]
    n = min(len(e) for e in examples)
    for e in examples[1:]:
        k = 0
        while k < n and e.input_ids[k] == first.input_ids[k] and e.loss_mask[k] == first.loss_mask[k]:
            k += 1
        n = k
    return n


def pack(examples: list[Example], group_size: int = 1) -> PackedBatch:
    """Concatenate ``examples`` into one row (no padding). Each run of ``group_size`` consecutive
    examples (the sequences of one training item) stores its common prefix once.

    A model token at position 0 of a sequence has no context and cannot be scored; sequences
    start with a prompt, so it never is.
    """
    if group_size < 1 or len(examples) % group_size:
        raise ValueError(f"{len(examples)} sequences do not split into groups of {group_size}")
    ids: list[int] = []
    pos: list[int] = []
    keep: list[int] = []
    labels: list[int] = []
    seq_index: list[int] = []
    counts: list[int] = []
    groups: list[Group] = []
    for g0 in range(0, len(examples), group_size):
        members = examples[g0 : g0 + group_size]
        p = _shared_prefix(members) if group_size > 1 else len(members[0])
        start = len(ids)
        ids.extend(members[0].input_ids[:p])
        pos.extend(range(p))
        suffixes: list[tuple[int, int]] = []
        for j, ex in enumerate(members):
            s = len(ids)
            ids.extend(ex.input_ids[p:])
            pos.extend(range(p, len(ex)))
            suffixes.append((s, len(ex) - p))
            n = 0
            for t in range(1, len(ex)):
                if ex.loss_mask[t]:
                    u = t - 1  # the position that predicts token t
                    keep.append(start + u if u < p else s + u - p)
                    labels.append(ex.input_ids[t])
                    seq_index.append(g0 + j)
                    n += 1
            counts.append(n)
        groups.append(Group(start, p, tuple(suffixes)))
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([pos], dtype=torch.long),
        keep=torch.tensor(keep, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        seq_index=torch.tensor(seq_index, dtype=torch.long),
        n_model_tokens=torch.tensor(counts, dtype=torch.long),
        n_sequences=len(examples),
        groups=tuple(groups),
        n_sequence_tokens=sum(len(e) for e in examples),
    )


LOGPS_CHUNK = 128  # LM-head positions scored at a time: 128 x 49152 fp32 logits are 24 MiB (< 32 MiB, see allocator.py)


def _chunk_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    return token_logps(F.linear(hidden, weight, bias), labels)


def head_logps(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, chunk: int = LOGPS_CHUNK) -> torch.Tensor:
    """``log softmax(head(hidden))[labels]`` per row of ``hidden`` [K, H], ``chunk`` rows at a time.

    Never holds more than one chunk of vocabulary-sized logits: under autograd each chunk is
    checkpointed (``torch.utils.checkpoint``: only its hidden rows are saved, its logits are
    recomputed in backward), so neither the [K, V] logits nor their gradient ever exist whole.
    """
    weight, bias = head.weight, head.bias
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    out = []
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s : s + chunk], labels[s : s + chunk]
        if grad:
            out.append(checkpoint(_chunk_logps, h, weight, bias, y, use_reentrant=False))
        else:
            out.append(_chunk_logps(h, weight, bias, y))
    return torch.cat(out) if out else hidden.new_zeros(0)


def _head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The plain linear LM head whose output is the logits, or None (then the logits are taken as they come)."""
    inner: Any = model
    while hasattr(inner, "module"):
        inner = inner.module
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    if any(getattr(config, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None  # the model transforms the head's output: score its real logits
    head = inner.get_output_embeddings()
    return head if isinstance(head, torch.nn.Linear) else None


def packed_logps(model: torch.nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed model-token log-probs of each packed sequence, and their model-token counts
    (:func:`packed_token_logps` summed per sequence)."""
    per_token = packed_token_logps(model, batch)
    sums = torch.zeros(batch.n_sequences, dtype=per_token.dtype, device=per_token.device)
    sums = sums.index_add(0, batch.seq_index, per_token)
    return sums, batch.n_model_tokens


def packed_token_logps(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """The log-prob of every model token of the packed sequences, in ``batch.labels`` order.

    One forward pass for every sequence of the micro-batch (chosen and rejected together),
    through ``model.__call__`` so DDP / FSDP / DeepSpeed / PEFT wrappers see the forward. Inside
    it the LM head runs only at ``batch.keep`` and returns the label log-probs chunk by chunk
    (``head_logps``), so the vocabulary-sized logits are never materialised.
    """
    if model.training and getattr(model, "is_activation_checkpointing", False) and not is_active(model):
        raise RuntimeError("with gradient checkpointing, enter trainer.attention.packed_attention(model) around backward too")
    head = _head(model)
    own_forward = head.__dict__.get("forward") if head is not None else None  # e.g. an accelerate hook's
    if head is not None:
        linear, labels = head, batch.labels

        def fused(hidden: torch.Tensor) -> torch.Tensor:  # hidden [1, K, H] -> [1, K, 1] log-probs
            return head_logps(hidden[0], linear, labels).view(1, -1, 1)

        head.forward = fused  # type: ignore[method-assign,assignment]
    try:
        with packed_attention(model):
            out = model(
                input_ids=batch.input_ids,
                position_ids=batch.position_ids,
                logits_to_keep=batch.keep,
                use_cache=False,
                packed_groups=batch.groups,
            )
    finally:
        if own_forward is not None:
            head.forward = own_forward  # type: ignore[union-attr,method-assign]
        elif head is not None:
            del head.forward  # back to the class's forward
    return out.logits[0, :, 0] if head is not None else token_logps(out.logits[0], batch.labels)
