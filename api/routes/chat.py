"""The OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Two model ids are listed. The agent (``MATHAGENT_PUBLIC_MODEL_ID``, stable across weight swaps)
solves the last user message with the conversation before it as context; its reasoning, code
cells and their outputs come back as one assistant message per choice whose content holds the
fenced ```python and ```output blocks, exactly as the model saw them. ``<id>-plain`` is the same
weights answering without tools or logging (a frontend's "task model"). What each request does
is decided in :mod:`api.chat_request`; the weights that answered are named by
``system_fingerprint``, the ``X-Model-Version`` header and ``model_version``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from agent.events import SolveResult
from agent.trajectory import EpisodeEnd, Trajectory
from api import plain, solving
from api.chat_request import ChatPlan, plain_model_id, plan, reply_limit, stop_sequences
from api.deps import RateLimited, State
from api.errors import ApiError, ErrorBody, ErrorResponse, error_type
from api.openai_errors import OpenAIRoute
from api.openai_protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
    dump,
)
from api.protocol import EpisodeDoneEv, ObservationEv, StartEv, TextEv
from api.sse import EventStreamResponse, sse

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)
log = logging.getLogger("mathagent.api")
STARTED = int(time.time())

AGENT_DESCRIPTION = "solves math by writing Python and running it; the conversation is its context; logged for training"
PLAIN_DESCRIPTION = "the same weights answering directly: no tools, not logged (use it as a frontend's task model)"


def _cards(state: State) -> list[ModelCard]:
    public = state.settings.public_model_id
    version = state.model_version
    return [ModelCard(id=public, created=STARTED, version=version, description=AGENT_DESCRIPTION),
            ModelCard(id=plain_model_id(public), created=STARTED, version=version, description=PLAIN_DESCRIPTION)]


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    return ModelList(data=_cards(state))


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, state: State) -> ModelCard:
    for card in _cards(state):
        if model_id == card.id:
            return card
    raise _no_model(model_id, state)


def _no_model(model: str, state: State) -> ApiError:
    ids = ", ".join(f"`{c.id}`" for c in _cards(state))
    return ApiError(404, f"The model `{model}` does not exist; this server serves {ids}", param="model",
                    code="model_not_found")


def _check_model(model: str, state: State) -> None:
    public = state.settings.public_model_id
    if model not in (public, plain_model_id(public), state.model_version):
        raise _no_model(model, state)


def _finish(reason: EpisodeEnd | None) -> str:
    return "length" if reason in (EpisodeEnd.token_budget, EpisodeEnd.turn_limit) else "stop"


def _agent_args(body: ChatCompletionRequest, p: ChatPlan, state: State) -> solving.SolveArgs:
    n = body.n or 1
    if n > state.settings.max_samples:
        raise ApiError(400, f"n: at most {state.settings.max_samples} on this server (each choice is a whole agent "
                       "episode)", param="n", code="too_many_samples")
    args = solving.SolveArgs(
        p.problem, gold=body.gold, max_turns=body.max_turns, samples=n, temperature=body.temperature, seed=body.seed,
        conversation=p.conversation, top_p=body.top_p, max_completion_tokens=body.reply_tokens,
    )
    args.check(state, problem_param=f"messages[{p.problem_index}].content")
    return args


def _plain_args(body: ChatCompletionRequest, p: ChatPlan, state: State) -> plain.PlainArgs:
    if (body.n or 1) != 1:
        raise ApiError(400, "n: the plain model answers with one choice", param="n", code="unsupported_value")
    if not p.problem.strip():
        raise ApiError(400, f"messages[{p.problem_index}].content: must not be empty",
                       param=f"messages[{p.problem_index}].content", code="empty_problem")
    return plain.PlainArgs(conversation=p.conversation, problem=p.problem, max_tokens=reply_limit(body, p),
                           temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop_sequences(body))


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    dependencies=[RateLimited],
    description="OpenAI-compatible chat completion. On the agent's model id the agent solves the last user "
    "message with the conversation as context (n samples, majority-voted); on `<id>-plain` the model answers "
    "without tools. `stream: true` sends `chat.completion.chunk` events and `data: [DONE]`.",
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
               503: {"model": ErrorResponse}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Any:
    _check_model(body.model, state)
    unknown = body.unknown_fields()
    if unknown:
        log.info("chat.completions: ignoring unknown request fields %s", unknown[:20])
    p = plan(body, state.settings.public_model_id)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if p.plain:
        if p.housekeeping is not None:
            log.info("chat.completions: %s request answered by plain generation (no episode, not logged)",
                     p.housekeeping)
        pargs = _plain_args(body, p, state)
        await solving.require_ready(state, sandbox=False)
        if body.stream:
            return await _plain_stream(state, pargs, body.model, include_usage)
        return await solving.respond_once(state, request, "chat", idempotency_key, body.model_dump(mode="json"),
                                          lambda: _plain_once(state, pargs, body.model))
    args = _agent_args(body, p, state)
    await solving.require_ready(state, sandbox=True)
    if body.stream:
        return await _stream(state, args, body.model, include_usage)

    async def work() -> dict[str, Any]:
        result: SolveResult = await solving.solve(state, request, args)
        return dump(_completion(state, result, body.model))

    return await solving.respond_once(state, request, "chat", idempotency_key, body.model_dump(mode="json"), work)


# ---- the agent


def _finals(result: SolveResult) -> list[Trajectory]:
    by_id = {t.id: t for t in result.trajectories}
    return [by_id[i] for i in result.final_ids if i in by_id] or result.trajectories[:1]


def _usage(trajectories: list[Trajectory]) -> Usage:
    """Completion: the model's tokens of every choice; prompt: the prompt once, plus every sandbox
    output the model read (it was fed in, not generated)."""
    prompt = completion = 0
    for i, traj in enumerate(trajectories):
        p, c = solving.usage_of(traj)
        first = len(traj.segments[0].token_ids) if traj.segments else 0
        prompt += p if i == 0 else p - first
        completion += c
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _completion(state: State, result: SolveResult, model: str) -> ChatCompletion:
    main = solving.main_trajectory(result)
    finals = _finals(result)
    choices = [
        Choice(index=i, message=ResponseMessage(content=solving.readable(state, t.response_text())),
               finish_reason=_finish(t.finish_reason), trajectory_id=t.id, answer=t.answer)  # type: ignore[arg-type]
        for i, t in enumerate(finals)
    ]
    return ChatCompletion(
        id=f"chatcmpl-{main.id}", created=int(time.time()), model=model, choices=choices, usage=_usage(finals),
        system_fingerprint=result.model_version, trajectory_id=main.id, model_version=result.model_version,
        answer=result.answer, correct=result.correct, vote_shares=result.vote_shares,
        feedback_token=state.feedback_tokens.mint(main.id) if state.feedback_tokens is not None else None,
    )


def _error_chunk(exc: Exception) -> bytes:
    if isinstance(exc, ApiError):
        return sse({"error": exc.body.model_dump()})
    log.error("chat stream failed: %s", exc, exc_info=exc)
    err = ErrorBody(message="internal error (logged on the server)", type=error_type(500), code="internal_error")
    return sse({"error": err.model_dump()})


async def _stream(state: State, args: solving.SolveArgs, model: str, include_usage: bool) -> EventStreamResponse:
    events = solving.events(state, args)
    first = await solving.first_event(events)  # bad arguments -> a 4xx before any byte is sent
    assert isinstance(first, StartEv)
    base = {"id": f"chatcmpl-{first.trajectory_id}", "created": int(time.time()), "model": model,
            "system_fingerprint": first.model_version, "trajectory_id": first.trajectory_id,
            "model_version": first.model_version}

    def chunk(index: int, delta: ChunkDelta, finish: str | None = None) -> bytes:
        c = ChatCompletionChunk(choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish)], **base)  # type: ignore[arg-type]
        return sse(c.model_dump(mode="json", exclude_none=False))

    async def body() -> AsyncIterator[bytes]:
        try:
            for i in range(args.samples):
                yield chunk(i, ChunkDelta(role="assistant", content=""))
            async for ev in events:
                if isinstance(ev, TextEv | ObservationEv) and ev.text:
                    yield chunk(ev.sample, ChunkDelta(content=ev.text))
                elif isinstance(ev, EpisodeDoneEv):
                    yield chunk(ev.sample, ChunkDelta(), _finish(ev.finish_reason))
                elif isinstance(ev, SolveResult) and include_usage:
                    usage = _usage(_finals(ev))
                    yield sse(ChatCompletionChunk(choices=[], usage=usage, **base).model_dump(mode="json"))  # type: ignore[arg-type]
        except Exception as exc:
            yield _error_chunk(exc)
        finally:
            await events.aclose()
        yield sse("[DONE]")

    return EventStreamResponse(body(), headers={"x-model-version": first.model_version,
                                                "x-trajectory-id": first.trajectory_id})


# ---- plain generation


async def _plain_once(state: State, args: plain.PlainArgs, model: str) -> dict[str, Any]:
    result: plain.PlainResult | None = None
    async for item in plain.generate(state, args):
        if isinstance(item, plain.PlainResult):
            result = item
    assert result is not None
    usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                  total_tokens=result.prompt_tokens + result.completion_tokens)
    completion = ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model,
        choices=[Choice(message=ResponseMessage(content=result.text), finish_reason=result.finish_reason)],  # type: ignore[arg-type]
        usage=usage, system_fingerprint=result.model_version, model_version=result.model_version,
    )
    return dump(completion)


async def _plain_stream(state: State, args: plain.PlainArgs, model: str, include_usage: bool) -> EventStreamResponse:
    version = state.model_version or ""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model,
            "system_fingerprint": version, "model_version": version}

    def chunk(delta: ChunkDelta, finish: str | None = None) -> bytes:
        c = ChatCompletionChunk(choices=[ChunkChoice(delta=delta, finish_reason=finish)], **base)  # type: ignore[arg-type]
        return sse(c.model_dump(mode="json", exclude_none=False))

    gen = plain.generate(state, args)
    try:
        first = await gen.__anext__()  # a prompt that cannot fit -> a 400 before any byte is sent
    except BaseException:
        await gen.aclose()  # type: ignore[attr-defined]
        raise

    async def items() -> AsyncIterator[str | plain.PlainResult]:
        yield first
        async for item in gen:
            yield item

    async def body() -> AsyncIterator[bytes]:
        try:
            yield chunk(ChunkDelta(role="assistant", content=""))
            async for item in items():
                if isinstance(item, str):
                    yield chunk(ChunkDelta(content=item))
                else:
                    yield chunk(ChunkDelta(), item.finish_reason)
                    if include_usage:
                        usage = Usage(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens,
                                      total_tokens=item.prompt_tokens + item.completion_tokens)
                        yield sse(ChatCompletionChunk(choices=[], usage=usage, **base).model_dump(mode="json"))  # type: ignore[arg-type]
        except Exception as exc:
            yield _error_chunk(exc)
        finally:
            await gen.aclose()  # type: ignore[attr-defined]
        yield sse("[DONE]")

    return EventStreamResponse(body(), headers={"x-model-version": version})
