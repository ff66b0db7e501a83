"""Plain generation: the model answering the messages as sent, with no tools and no record.

It serves the ``<public id>-plain`` model id (a frontend's "task model") and the housekeeping
requests a frontend sends to the agent's id (:mod:`api.housekeeping`): one generation, no
sandbox, no trajectory, so nothing of it can reach the trainer. The messages go through the
chat template as sent (no system prompt of ours); a conversation too long for the episode
budget loses its oldest turns first, as on the agent (:mod:`agent.conversation`). The reply is
at most ``max_tokens`` and at most ``MATHAGENT_MAX_NEW_TOKENS`` tokens; stop sequences end it
and, as in OpenAI's API, are not part of it. Greedy unless a temperature is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from agent.conversation import Conversation, fit, prompt_limit
from agent.engines.base import Completion, FinishReason, GenerationRequest
from api import solving
from api.state import AppState


@dataclass
class PlainArgs:
    conversation: Conversation
    problem: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class PlainResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    model_version: str


def _messages(c: Conversation, problem: str) -> list[dict[str, str]]:
    out = [{"role": "system", "content": c.system}] if c.system else []
    out += [{"role": t.role, "content": t.content} for t in c.turns]
    return [*out, {"role": "user", "content": problem}]


def _cut_stop(text: str, stop: str | None) -> str:
    return text[: -len(stop)] if stop and text.endswith(stop) else text


async def generate(state: AppState, args: PlainArgs) -> AsyncIterator[str | PlainResult]:
    """Text pieces as they are generated, then one :class:`PlainResult`."""
    s = state.settings
    async with solving.pinned_solver(state) as solver:
        engine = solver.engine

        def prompt_len(c: Conversation) -> int:
            return len(engine.chat_prefix(_messages(c, args.problem)))

        limit = prompt_limit(s.max_new_tokens, s.max_total_tokens)
        conversation = solving.fitted(lambda: fit(args.conversation, prompt_len, limit))
        prompt_ids = engine.chat_prefix(_messages(conversation, args.problem))
        room = min(s.max_new_tokens, s.max_total_tokens - len(prompt_ids))
        request = GenerationRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=min(args.max_tokens or room, room),
            temperature=args.temperature or 0.0,
            top_p=1.0 if args.top_p is None else args.top_p,
            seed=args.seed,
            stop=args.stop,
            version=engine.model_version,
        )
        hold = max((len(x) for x in args.stop), default=1) - 1  # a stop sequence may straddle two pieces
        pending = ""
        done: Completion | None = None
        stream: Any = engine.stream(request)
        async with contextlib.aclosing(stream):
            async for delta in stream:
                pending += solving.readable(state, delta.text)
                if delta.done is not None:
                    done = delta.done
                    break
                if len(pending) > hold:
                    cut = len(pending) - hold
                    yield pending[:cut]
                    pending = pending[cut:]
        if done is None:
            raise RuntimeError("the engine's stream ended without a completion")
        tail = _cut_stop(pending, done.stop_string if done.stop_string in args.stop else None)
        if tail:
            yield tail
        text = _cut_stop(solving.readable(state, done.text), done.stop_string if done.stop_string in args.stop else None)
        yield PlainResult(
            text=text,
            finish_reason="length" if done.finish_reason is FinishReason.length else "stop",
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(done.token_ids),
            model_version=engine.model_version,
        )
