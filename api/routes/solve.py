"""``POST /v1/solve``: solve a problem, as one JSON response or as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from agent.events import SolveResult
from agent.trajectory import Mode
from api import solving
from api.deps import RateLimited, State
from api.errors import ApiError, ErrorBody, ErrorResponse, error_type
from api.protocol import ErrorEv, ResultEv, SolveRequest, SolveResponse
from api.sse import EventStreamResponse, sse

router = APIRouter(tags=["solve"])

STREAM_DOC = """\
With `stream: true` the response is `text/event-stream`; each event's `event:` line is its type:
`start` (trajectory id, model version), `text` (model text delta), `code` (a code cell about to run),
`observation` (the sandbox result: status, stdout, stderr), `answer`, `episode_done`, and finally
`done` (the full result, as the non-streamed response) or `error` (`{"error": {...}}`)."""


def _response(state: State, result: SolveResult) -> SolveResponse:
    """The wire response, with the feedback token of its trajectory (only the solving caller gets it)."""
    response = solving.to_response(state, result)
    assert state.feedback_tokens is not None
    response.feedback_token = state.feedback_tokens.mint(response.trajectory_id)
    return response


def _args(body: SolveRequest) -> solving.SolveArgs:
    return solving.SolveArgs(
        body.problem, gold=body.gold, mode=body.mode, max_turns=body.max_turns, samples=body.samples,
        temperature=body.temperature, revisions=body.revisions, seed=body.seed,
    )


@router.post(
    "/v1/solve",
    response_model=SolveResponse,
    dependencies=[RateLimited],
    description="Solve a math problem with the tool-using agent.\n\n" + STREAM_DOC,
    responses={422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def solve(
    body: SolveRequest,
    request: Request,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Any:
    args = _args(body)
    args.check(state)
    await solving.require_ready(state, sandbox=args.mode is Mode.tir)  # 503 at once while a component is down
    if body.stream:
        return await _stream(state, args)

    async def work() -> dict[str, Any]:
        result: SolveResult = await solving.solve(state, request, args)
        return _response(state, result).model_dump(mode="json")

    return await solving.respond_once(state, request, "solve", idempotency_key, body.model_dump(mode="json"), work)


async def _stream(state: State, args: solving.SolveArgs) -> EventStreamResponse:
    events = solving.events(state, args)
    first = await solving.first_event(events)  # bad arguments -> a 4xx before any byte is sent

    async def body() -> AsyncIterator[bytes]:
        try:
            yield sse(first.model_dump(mode="json"), first.type)
            async for ev in events:
                if isinstance(ev, SolveResult):
                    done = ResultEv(result=_response(state, ev))
                    yield sse(done.model_dump(mode="json"), done.type)
                else:
                    yield sse(ev.model_dump(mode="json"), ev.type)
        except ApiError as exc:
            yield sse(ErrorEv(error=exc.body.model_dump()).model_dump(), "error")
        except Exception as exc:
            solving.log.exception("solve stream failed: %s", exc)
            err = ErrorBody(message="internal error (logged on the server)", type=error_type(500), code="internal_error")
            yield sse(ErrorEv(error=err.model_dump()).model_dump(), "error")
        finally:
            await events.aclose()

    headers = {"x-model-version": getattr(first, "model_version", "") or (state.model_version or ""),
               "x-trajectory-id": getattr(first, "trajectory_id", "")}
    return EventStreamResponse(body(), headers=headers)
