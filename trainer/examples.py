"""Tokenised training sequences built from logged trajectories, and the padding-free packer.

The loss mask comes from the trajectory's segments (``model`` = 1, ``prompt`` and
``observation`` = 0), never from matching token ids: the model's own stop / end-of-turn tokens
are inside its ``model`` segments, so they are learned; the sandbox's injected output is not.

Packing: all sequences of a micro-batch are concatenated into ONE row with ``position_ids``
restarting at 0 for each sequence. transformers builds a block-diagonal attention mask from
such position ids (``find_packed_sequence_indices``), so no compute is spent on padding, and
the LM head is evaluated only at positions whose next token is a model token
(``logits_to_keep`` as an index tensor), which skips the vocabulary projection for prompts and
observations as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, Field

from agent.trajectory import SegmentKind, Trajectory
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
    """Sequences packed into one row. ``keep`` are the positions whose NEXT token is a model
    token; ``labels[k]`` is that next token and ``seq_index[k]`` the sequence it belongs to."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    keep: torch.Tensor  # [K]
    labels: torch.Tensor  # [K]
    seq_index: torch.Tensor  # [K]
    n_model_tokens: torch.Tensor  # [n_sequences]
    n_sequences: int

    @property
    def n_tokens(self) -> int:
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
        )


def pack(examples: list[Example]) -> PackedBatch:
    """Concatenate ``examples`` into one row (no padding). A model token at position 0 of a
    sequence has no context and cannot be scored; sequences start with a prompt, so it never is."""
    ids: list[int] = []
    pos: list[int] = []
    keep: list[int] = []
    labels: list[int] = []
    seq_index: list[int] = []
    counts: list[int] = []
    for i, ex in enumerate(examples):
        offset = len(ids)
        ids.extend(ex.input_ids)
        pos.extend(range(len(ex.input_ids)))
        n = 0
        for t in range(1, len(ex.input_ids)):
            if ex.loss_mask[t]:
                keep.append(offset + t - 1)
                labels.append(ex.input_ids[t])
                seq_index.append(i)
                n += 1
        counts.append(n)
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([pos], dtype=torch.long),
        keep=torch.tensor(keep, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        seq_index=torch.tensor(seq_index, dtype=torch.long),
        n_model_tokens=torch.tensor(counts, dtype=torch.long),
        n_sequences=len(examples),
    )


def packed_logps(model: torch.nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed model-token log-probs of each packed sequence, and their model-token counts.

    One forward pass for every sequence of the micro-batch (chosen and rejected together).
    Runs through ``model.__call__`` so DDP / FSDP / DeepSpeed / PEFT wrappers see the forward.
    """
    out = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        logits_to_keep=batch.keep,
        use_cache=False,
    )
    per_token = token_logps(out.logits[0], batch.labels)
    sums = torch.zeros(batch.n_sequences, dtype=per_token.dtype, device=per_token.device)
    sums = sums.index_add(0, batch.seq_index, per_token)
    return sums, batch.n_model_tokens
