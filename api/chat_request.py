"""What a chat completion request asks the server to do: which model, which conversation, which limits.

A request goes one of two ways:

- **the agent** (``MATHAGENT_PUBLIC_MODEL_ID``, "mathagent"): the last user message is the
  problem; the system prompt and the earlier turns are its context (:mod:`agent.conversation`);
  ``n`` samples are majority-voted; each episode is logged as a trajectory.
- **plain generation** (``<public id>-plain``, and any housekeeping request a frontend sends to
  the agent's id, :mod:`api.housekeeping`): one generation from the messages as sent, no tools,
  no sandbox, nothing logged.

OpenAI fields this server cannot honour are refused by name with a 400 (a client that sends
``tools`` must learn that no tool will be called), never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.conversation import Conversation, Turn
from api import housekeeping
from api.errors import ApiError
from api.openai_protocol import ChatCompletionRequest, ChatMessage

PLAIN_SUFFIX = "-plain"
MAX_STOP = 4

_NO_TOOLS = "this server runs no client-side tools (the agent runs its own Python in its sandbox)"


def plain_model_id(public_id: str) -> str:
    """The plain-generation model id: no tools, not logged (a frontend's "task model")."""
    return public_id + PLAIN_SUFFIX


@dataclass
class ChatPlan:
    plain: bool
    housekeeping: str | None  # the frontend task the message is a prompt of (answered plainly, briefly)
    problem: str  # the last user message
    conversation: Conversation  # system prompt and earlier turns
    problem_index: int  # position of the problem in `messages` (for `param`)


def _refusals(body: ChatCompletionRequest, plain: bool) -> list[tuple[str, bool, str]]:
    rf = body.response_format or {}
    return [
        ("tools", bool(body.tools), _NO_TOOLS),
        ("tool_choice", body.tool_choice not in (None, "none"), _NO_TOOLS),
        ("functions", bool(body.functions), _NO_TOOLS),
        ("function_call", body.function_call not in (None, "none"), _NO_TOOLS),
        ("response_format", rf.get("type", "text") != "text", "only text replies are supported (no JSON mode or schema)"),
        ("logprobs", bool(body.logprobs), "log probabilities are not returned by this server"),
        ("top_logprobs", bool(body.top_logprobs), "log probabilities are not returned by this server"),
        ("logit_bias", bool(body.logit_bias), "logit bias is not supported"),
        ("presence_penalty", bool(body.presence_penalty), "sampling penalties are not supported"),
        ("frequency_penalty", bool(body.frequency_penalty), "sampling penalties are not supported"),
        ("modalities", body.modalities not in (None, ["text"]), "only text output is supported"),
        ("audio", body.audio is not None, "audio output is not supported"),
        ("prediction", body.prediction is not None, "predicted outputs are not supported"),
        ("stop", not plain and bool(body.stop),
         "the agent's turns end at its own code fences; stop sequences work on the plain model"),
    ]


def check_supported(body: ChatCompletionRequest, *, plain: bool) -> None:
    """A 400 naming the first field set to something this server cannot do."""
    for param, refused, why in _refusals(body, plain):
        if refused:
            raise ApiError(400, f"{param}: not supported: {why}", param=param, code="unsupported_parameter")
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ApiError(400, f"stop: at most {MAX_STOP} non-empty sequences", param="stop", code="invalid_value")


def stop_sequences(body: ChatCompletionRequest) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])


def _text(message: ChatMessage, i: int) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        return ""
    for j, part in enumerate(message.content):
        if part.type not in ("text", "input_text"):
            raise ApiError(400, f"messages[{i}].content[{j}].type: only text parts are supported (got {part.type!r})",
                           param=f"messages[{i}].content[{j}].type", code="unsupported_value")
    return "".join(p.text or "" for p in message.content)


def conversation_of(messages: list[ChatMessage]) -> tuple[Conversation, str, int]:
    """(system prompt and earlier turns, the problem, its index) of a message list."""
    system: list[str] = []
    turns: list[Turn] = []
    for i, m in enumerate(messages):
        if m.role in ("tool", "function"):
            raise ApiError(400, f"messages[{i}].role: {m.role!r} messages answer client-side tool calls; {_NO_TOOLS}",
                           param=f"messages[{i}].role", code="unsupported_value")
        if m.tool_calls:
            raise ApiError(400, f"messages[{i}].tool_calls: {_NO_TOOLS}", param=f"messages[{i}].tool_calls",
                           code="unsupported_parameter")
        text = _text(m, i)
        if m.role in ("system", "developer"):
            if text.strip():
                system.append(text.strip())
        else:
            turns.append(Turn(role=m.role, content=text))  # type: ignore[arg-type]
    last = len(messages) - 1
    if not turns or messages[last].role != "user":
        raise ApiError(400, f"messages[{last}].role: the last message must be the user's (it is the problem)",
                       param=f"messages[{last}].role", code="no_user_message")
    problem = turns.pop().content
    return Conversation(system="\n\n".join(system) or None, turns=turns), problem, last


def plan(body: ChatCompletionRequest, public_id: str) -> ChatPlan:
    """Route the request (agent or plain) and check every field against what that route supports."""
    conversation, problem, index = conversation_of(body.messages)
    kind = housekeeping.housekeeping_kind(problem)
    plain = kind is not None or body.model == plain_model_id(public_id)
    check_supported(body, plain=plain)
    return ChatPlan(plain=plain, housekeeping=kind, problem=problem, conversation=conversation, problem_index=index)


def reply_limit(body: ChatCompletionRequest, p: ChatPlan) -> int | None:
    """The reply's bound: the request's, and for housekeeping at most ``housekeeping.MAX_TOKENS``."""
    if p.housekeeping is None:
        return body.reply_tokens
    return min(body.reply_tokens or housekeeping.MAX_TOKENS, housekeeping.MAX_TOKENS)
