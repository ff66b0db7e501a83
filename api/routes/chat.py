"""The OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``.

The last user message is the problem; the agent's reasoning, its code cells and their outputs
come back as one assistant message whose content holds the fenced ```python and ```output
blocks, exactly as the model saw them. One public model id (``MATHAGENT_PUBLIC_MODEL_ID``)
stays stable across weight swaps; the weights that answered are named by ``system_fingerprint``,
the ``X-Model-Version`` header and the ``model_version`` field, next to the ``trajectory_id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from agent.events import SolveResult
from agent.trajectory import EpisodeEnd
from api import solving
from api.deps import RateLimited, State
from api.errors import ApiError, ErrorBody, ErrorResponse, error_type
from api.openai_protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
    dump,
)
from api.protocol import ObservationEv, StartEv, TextEv
from api.sse import EventStreamResponse, sse

router = APIRouter(tags=["openai"])
log = logging.getLogger("mathagent.api")
STARTED = int(time.time())


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    return ModelList(data=[ModelCard(id=state.settings.public_model_id, created=STARTED, version=state.model_version)])


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, state: State) -> ModelCard:
    _check_model(model_id, state)
    return ModelCard(id=state.settings.public_model_id, created=STARTED, version=state.model_version)


def _check_model(model: str, state: State) -> None:
    if model not in (state.settings.public_model_id, state.model_version):
        raise ApiError(
            404, f"The model `{model}` does not exist; this server serves `{state.settings.public_model_id}`",
            param="model", code="model_not_found",
        )


def _problem(messages: list[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text()
    raise ApiError(400, "messages: no user message (the last user message is the problem)", param="messages",
                   code="no_user_message")


def _args(body: ChatCompletionRequest, state: State) -> solving.SolveArgs:
    unknown = body.unknown_fields()
    if unknown:
        log.info("chat.completions: ignoring unknown request fields %s", unknown[:20])
    if (body.n or 1) != 1:
        raise ApiError(400, "n: only n=1 is supported (use /v1/solve with samples for majority voting)", param="n",
                       code="unsupported_value")
    _check_model(body.model, state)
    args = solving.SolveArgs(
        _problem(body.messages), gold=body.gold, max_turns=body.max_turns, temperature=body.temperature, seed=body.seed,
    )
    args.check(state, problem_param="messages")
    return args


def _finish(reason: EpisodeEnd | None) -> str:
    return "length" if reason in (EpisodeEnd.token_budget, EpisodeEnd.turn_limit) else "stop"


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    dependencies=[RateLimited],
    description="OpenAI-compatible chat completion: the agent solves the last user message. "
    "`stream: true` sends `chat.completion.chunk` events and `data: [DONE]`.",
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
               429: {"model": ErrorResponse}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Any:
    args = _args(body, state)
    public = state.settings.public_model_id
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(state, args, public, include_usage)

    async def work() -> dict[str, Any]:
        result: SolveResult = await solving.solve(state, request, args)
        main = solving.main_trajectory(result)
        prompt_tokens, completion_tokens = solving.usage_of(main)
        completion = ChatCompletion(
            id=f"chatcmpl-{main.id}",
            created=int(time.time()),
            model=public,
            choices=[Choice(message=ResponseMessage(content=solving.readable(state, main.response_text())), finish_reason=_finish(main.finish_reason))],  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens),
            system_fingerprint=result.model_version,
            trajectory_id=main.id,
            model_version=result.model_version,
            answer=result.answer,
            correct=result.correct,
        )
        return dump(completion)

    return await solving.respond_once(state, request, "chat", idempotency_key, body.model_dump(mode="json"), work)


async def _stream(state: State, args: solving.SolveArgs, public: str, include_usage: bool) -> EventStreamResponse:
    events = solving.events(state, args)
    first = await solving.first_event(events)
    assert isinstance(first, StartEv)
    created = int(time.time())
    base = {"id": f"chatcmpl-{first.trajectory_id}", "created": created, "model": public,
            "system_fingerprint": first.model_version, "trajectory_id": first.trajectory_id,
            "model_version": first.model_version}

    def chunk(delta: ChunkDelta, finish: str | None = None) -> bytes:
        c = ChatCompletionChunk(choices=[ChunkChoice(delta=delta, finish_reason=finish)], **base)  # type: ignore[arg-type]
        return sse(c.model_dump(mode="json", exclude_none=False))

    async def body() -> AsyncIterator[bytes]:
        try:
            yield chunk(ChunkDelta(role="assistant", content=""))
            async for ev in events:
                if isinstance(ev, TextEv | ObservationEv) and ev.text:
                    yield chunk(ChunkDelta(content=ev.text))
                elif isinstance(ev, SolveResult):
                    main = solving.main_trajectory(ev)
                    yield chunk(ChunkDelta(), _finish(main.finish_reason))
                    if include_usage:
                        p, c = solving.usage_of(main)
                        usage_chunk = ChatCompletionChunk(
                            choices=[], usage=Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c), **base  # type: ignore[arg-type]
                        )
                        yield sse(usage_chunk.model_dump(mode="json"))
        except ApiError as exc:
            yield sse({"error": exc.body.model_dump()})
        except Exception as exc:
            log.exception("chat stream failed: %s", exc)
            err = ErrorBody(message="internal error (logged on the server)", type=error_type(500), code="internal_error")
            yield sse({"error": err.model_dump()})
        finally:
            await events.aclose()
        yield sse("[DONE]")

    return EventStreamResponse(body(), headers={"x-model-version": first.model_version,
                                                "x-trajectory-id": first.trajectory_id})
