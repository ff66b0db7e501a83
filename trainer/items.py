"""Training items: the sequences one loss term needs, and the loss of a micro-batch of items.

Per loss: ``sft`` trains on the chosen sequence alone (deduplicated: IRPO's cycling repeats
winners); ``dpo``, ``dpo+nll``, ``ipo`` and ``kto`` on (chosen, rejected); ``srpo`` on six
sequences: w|x, l|x, then w and l after revision prompts showing l and w
(``SRPO_ORDER``). Reference log-probs are stored on the item, one per sequence.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel

from trainer.examples import Example, truncate
from trainer.losses import SRPO_ORDER, SrpoLogps, preference_loss, srpo_loss
from trainer.pairs import Pair

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TrainItem(BaseModel):
    sequences: list[Example]
    weight: float = 1.0
    ref_logps: list[float] | None = None

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def sequences_per_item(loss: str) -> int:
    return {"sft": 1, "srpo": len(SRPO_ORDER)}.get(loss, 2)


def revision_prompt_ids(tokenizer: PreTrainedTokenizerBase, pair: Pair, attempt: str) -> list[int]:
    """The agent's SRPO revision prompt (``agent.prompts``) rendered with the chat template, stating
    the pair's tool-call limit as the agent's prompt did (``Pair.max_turns``)."""
    from agent.limits import MAX_TURNS
    from agent.prompts import messages, revision_message

    text = revision_message(pair.problem, pair.mode, attempt, max_turns=MAX_TURNS if pair.max_turns is None else pair.max_turns)
    ids = tokenizer.apply_chat_template(messages(text), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def build_items(
    pairs: list[Pair], loss: str, *, max_length: int, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[list[TrainItem], dict[str, int]]:
    """Items for ``loss`` from ``pairs``, truncated to ``max_length``; counts of what was dropped."""
    counts: Counter[str] = Counter()
    items: list[TrainItem] = []
    seen_chosen: set[tuple[int, ...]] = set()
    for pair in pairs:
        if loss == "sft":
            key = tuple(pair.chosen.input_ids)
            if key in seen_chosen:
                counts["sft_duplicate_chosen"] += 1
                continue
            seen_chosen.add(key)
            seqs = [pair.chosen]
        elif loss == "srpo":
            if tokenizer is None:
                raise ValueError("srpo needs the tokenizer to render revision prompts")
            show_l = revision_prompt_ids(tokenizer, pair, pair.rejected_text)
            show_w = revision_prompt_ids(tokenizer, pair, pair.chosen_text)
            w, lo = pair.chosen, pair.rejected
            seqs = [w, lo, w.with_prompt(show_l), lo.with_prompt(show_l), w.with_prompt(show_w), lo.with_prompt(show_w)]
        else:
            seqs = [pair.chosen, pair.rejected]
        cut = [truncate(s, max_length) for s in seqs]
        if any(c is None for c in cut):
            counts["dropped_prompt_too_long"] += 1
            continue
        counts["truncated_sequences"] += sum(len(c) < len(s) for c, s in zip(cut, seqs, strict=True) if c)
        items.append(TrainItem(sequences=[c for c in cut if c is not None], weight=pair.weight))
    counts["items"] = len(items)
    return items, dict(counts)


def items_loss(
    logps: torch.Tensor,
    n_tokens: torch.Tensor,
    items: list[TrainItem],
    *,
    loss: str,
    beta: float,
    alpha: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a micro-batch whose sequences were packed item-major (item 0's sequences first)."""
    s = sequences_per_item(loss)
    device = logps.device
    policy = logps.view(len(items), s)
    lengths = n_tokens.view(len(items), s).to(device)
    if any(it.ref_logps is None for it in items):
        raise ValueError("reference log-probs missing: compute them before training")
    ref = torch.tensor([it.ref_logps for it in items], dtype=policy.dtype, device=device)
    weights = torch.tensor([it.weight for it in items], dtype=policy.dtype, device=device)
    if loss == "srpo":
        return srpo_loss(
            SrpoLogps(*policy.unbind(1)), SrpoLogps(*ref.unbind(1)), beta=beta, alpha=alpha, weights=weights
        )
    if loss == "sft":
        zeros = torch.zeros_like(policy[:, 0])
        return preference_loss(
            policy[:, 0], zeros, ref[:, 0], zeros, loss_type="sft", beta=beta, chosen_lengths=lengths[:, 0], weights=weights
        )
    return preference_loss(
        policy[:, 0],
        policy[:, 1],
        ref[:, 0],
        ref[:, 1],
        loss_type=loss,
        beta=beta,
        chosen_lengths=lengths[:, 0],
        alpha=alpha,
        weights=weights,
    )
