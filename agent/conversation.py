"""The context a chat brings to an episode: the client's system prompt and the earlier turns.

A follow-up ("now double it") means nothing without the turns before it. An episode with a
:class:`Conversation` sees our system prompt with the client's appended, the earlier turns as
they were sent (assistant turns with their ```python and ```output blocks, as the model saw
them), then the problem in the task prompt (:func:`agent.prompts.messages`).

The prompt must leave the episode room to work: it may take at most ``max_total_tokens`` minus
one model turn (``max_new_tokens``, at most half the budget). When it is longer, the oldest turns
are dropped first, a whole exchange at a time (the kept turns start with a user turn), until it
fits. The client's system prompt and the problem are never cut: when they alone do not fit, the
request is refused with :class:`ContextTooLong`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class Conversation(BaseModel):
    system: str | None = Field(None, description="the client's system prompt (appended to ours)")
    turns: list[Turn] = Field(default_factory=list, description="earlier turns, oldest first; the problem is not one")
    dropped: int = Field(0, description="earliest turns left out to fit the token budget")

    @property
    def context_messages(self) -> int:
        """Messages in the prompt besides our own and the problem."""
        return int(bool(self.system and self.system.strip())) + len(self.turns)

    def history(self) -> list[tuple[str, str]]:
        return [(t.role, t.content) for t in self.turns]


class ContextTooLong(ValueError):
    """The system prompt and the problem alone exceed what the episode budget leaves for a prompt."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"the prompt needs {tokens} tokens (system prompt and problem, every earlier turn dropped); "
            f"at most {limit} fit this server's episode budget: shorten the system prompt or the message"
        )
        self.tokens = tokens
        self.limit = limit


def prompt_limit(max_new_tokens: int, max_total_tokens: int) -> int:
    """The longest prompt an episode accepts: the budget less one model turn (at most half of it)."""
    return max_total_tokens - min(max_new_tokens, max_total_tokens // 2)


def fit(conversation: Conversation, prompt_len: Callable[[Conversation], int], limit: int) -> Conversation:
    """``conversation`` with its oldest exchanges dropped until ``prompt_len`` of it is at most ``limit``.

    Cut points are the starts of user turns (and the end), so the kept turns begin with a user
    turn; the fewest turns are dropped (the prompt only shrinks as turns are dropped: binary search).
    """
    turns = conversation.turns
    cuts = [i for i, t in enumerate(turns) if t.role == "user" and i > 0] + [len(turns)]
    cuts = [0, *cuts] if turns else [0]

    def at(cut: int) -> Conversation:
        return conversation.model_copy(update={"turns": turns[cut:], "dropped": conversation.dropped + cut})

    if prompt_len(at(0)) <= limit:
        return at(0)
    lo, hi = 1, len(cuts) - 1  # the answer is the first cut index whose prompt fits
    last = at(cuts[hi])
    needed = prompt_len(last)
    if needed > limit:
        raise ContextTooLong(needed, limit)
    while lo < hi:
        mid = (lo + hi) // 2
        if prompt_len(at(cuts[mid])) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return at(cuts[lo])
