"""The solve service behind ``/v1/solve`` and ``/v1/chat/completions``: limits, metrics,
cancellation, and the translation of the solver's typed events into wire events.

Routers stay thin: they parse, call these functions, and shape the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

from agent.conversation import ContextTooLong, Conversation
from agent.events import (
    AnswerEvent,
    CodeCell,
    EpisodeDone,
    EpisodeStart,
    SandboxOutput,
    SolveDone,
    SolveResult,
    TextDelta,
)
from agent.solver import SolveError
from agent.trajectory import Mode, SegmentKind, Trajectory
from api.errors import RETRY_AFTER_S, ApiError
from api.limits import client_key
from api.pinned import PinnedEngine
from api.protocol import (
    AnswerEv,
    CodeEv,
    EpisodeDoneEv,
    ObservationEv,
    SolveResponse,
    StartEv,
    TextEv,
    VoteOut,
    call_out,
)
from api.state import AppState

log = logging.getLogger("mathagent.api")
T = TypeVar("T")


class SolveArgs:
    """The arguments of one solve, checked against the deployment's caps."""

    def __init__(
        self,
        problem: str,
        *,
        gold: str | None = None,
        mode: Mode = Mode.tir,
        max_turns: int | None = None,
        samples: int = 1,
        temperature: float | None = None,
        revisions: int = 0,
        seed: int | None = None,
        conversation: Conversation | None = None,
        top_p: float | None = None,
        max_completion_tokens: int | None = None,
    ) -> None:
        self.problem = problem
        self.gold = gold
        self.mode = mode
        self.max_turns = max_turns
        self.samples = samples
        self.temperature = temperature
        self.revisions = revisions
        self.seed = seed
        self.conversation = conversation
        self.top_p = top_p
        self.max_completion_tokens = max_completion_tokens

    def check(self, state: AppState, *, problem_param: str = "problem") -> None:
        s = state.settings
        if not self.problem.strip():
            raise ApiError(422, f"{problem_param}: must not be empty", param=problem_param, code="empty_problem")
        if len(self.problem) > s.max_problem_chars:
            raise ApiError(
                422, f"{problem_param}: {len(self.problem)} characters; at most {s.max_problem_chars} are accepted",
                param=problem_param, code="problem_too_long",
            )
        if self.samples > s.max_samples:
            raise ApiError(422, f"samples: at most {s.max_samples} on this server", param="samples", code="too_many_samples")
        if self.max_turns is not None and self.max_turns > s.max_turns_limit:
            raise ApiError(422, f"max_turns: at most {s.max_turns_limit} on this server", param="max_turns",
                           code="too_many_turns")
        if self.revisions > s.max_revisions:
            raise ApiError(422, f"revisions: at most {s.max_revisions} on this server", param="revisions",
                           code="too_many_revisions")

    def kwargs(self) -> dict[str, Any]:
        return {
            "gold": self.gold, "mode": self.mode, "max_turns": self.max_turns, "samples": self.samples,
            "temperature": self.temperature, "revisions": self.revisions, "seed": self.seed, "source": "api",
            "conversation": self.conversation, "top_p": self.top_p, "max_completion_tokens": self.max_completion_tokens,
        }


DEFAULT_SPECIAL = ("<|im_end|>", "<|endoftext|>", "<|im_start|>", "</s>")


def special_tokens(state: AppState) -> tuple[str, ...]:
    """The tokenizer's special tokens (end of turn...): kept in trajectories, hidden from readers."""
    cached = state.extra.get("special_tokens")
    if cached is None:
        tok = getattr(state.engine, "tokenizer", None)
        found = [t for t in getattr(tok, "all_special_tokens", []) if isinstance(t, str) and t]
        cached = tuple(sorted(set(found) | set(DEFAULT_SPECIAL), key=len, reverse=True))
        state.extra["special_tokens"] = cached
    return tuple(cached)


def readable(state: AppState, text: str) -> str:
    for token in special_tokens(state):
        if token in text:
            text = text.replace(token, "")
    return text


SANDBOX_PROBE_OK_S = 2.0  # a sandbox that answered this recently is not asked again


def require_solver(state: AppState) -> Any:
    if state.solver is None:
        raise ApiError(503, "the model is still loading: retry in a few seconds (GET /readyz shows when it is up)",
                       code="model_not_ready", headers={"retry-after": str(RETRY_AFTER_S)})
    return state.solver


async def require_ready(state: AppState, *, sandbox: bool) -> None:
    """Refuse at once (503 with Retry-After) what cannot be served now: no model loaded, or, for a
    solve that runs code, a sandbox that does not answer. Otherwise a solve would be admitted and
    fail minutes later with a sandbox error in every cell."""
    require_solver(state)
    if not sandbox:
        return
    last_ok = state.extra.get("sandbox_ok_at", 0.0)
    if time.monotonic() - last_ok < SANDBOX_PROBE_OK_S:
        return
    try:
        if state.sandbox is None:
            raise RuntimeError("no sandbox client")
        info = await asyncio.wait_for(state.sandbox.health(), 2.0)
        status = info.get("status", "ok") if isinstance(info, dict) else "ok"
        if status != "ok":
            raise RuntimeError(f"it reports {status!r}")
    except Exception as exc:
        why = type(exc).__name__  # the details (socket paths...) are for /readyz and the logs, not every client
        log.warning("refusing a solve: the sandbox is not answering: %s", exc)
        raise ApiError(
            503, f"the sandbox that runs the agent's code is not answering ({why}). Solves are refused until it is "
            f"back: retry in a few seconds; GET /readyz shows each component. Operators: `mathagent up` starts it.",
            code="sandbox_unavailable", headers={"retry-after": str(RETRY_AFTER_S)},
        ) from None
    state.extra["sandbox_ok_at"] = time.monotonic()


def fitted(work: Callable[[], T]) -> T:
    """Run a conversation fit, turning ``ContextTooLong`` into the OpenAI-style 400."""
    try:
        return work()
    except ContextTooLong as exc:
        raise _too_long(exc) from None


def _too_long(exc: ContextTooLong) -> ApiError:
    return ApiError(400, str(exc), param="messages", code="context_length_exceeded")


@contextlib.asynccontextmanager
async def pinned_solver(state: AppState) -> AsyncIterator[Any]:
    """A solver pinned to the version active at admission, leased until the solve ends (hot swap:
    the version is not retired while the lease is held, and every request carries it)."""
    solver = require_solver(state)
    if state.swap is None:
        yield solver
        return
    async with state.swap.lease() as version:
        pinned = copy.copy(solver)  # a shallow copy: same sandbox, log and settings, one pinned engine view
        pinned.engine = PinnedEngine(solver.engine, version)
        yield pinned


async def until_disconnect(request: Request, work: Awaitable[T], state: AppState) -> T:
    """Run ``work``, cancelling it if the client disconnects first (frees engine and sandbox)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            state.metrics.episodes_cancelled.inc()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ApiError(499, "client closed the request", code="client_closed")
        return task.result()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        if not task.done():
            task.cancel()


async def solve(state: AppState, request: Request, args: SolveArgs) -> SolveResult:
    require_solver(state)
    state.metrics.in_flight.inc()
    try:
        async with pinned_solver(state) as solver:
            result: SolveResult = await until_disconnect(request, solver.solve(args.problem, **args.kwargs()), state)
    except SolveError as exc:
        raise ApiError(422, str(exc), code="invalid_solve") from None
    except ContextTooLong as exc:
        raise _too_long(exc) from None
    finally:
        state.metrics.in_flight.dec()
    for traj in result.trajectories:
        state.metrics.record_trajectory(traj)
    return result


def main_trajectory(result: SolveResult) -> Trajectory:
    """The trajectory behind the answer: the first sample's final revision that gave it."""
    by_id = {t.id: t for t in result.trajectories}
    finals = [by_id[i] for i in result.final_ids if i in by_id]
    for traj in finals:
        if traj.answer == result.answer:
            return traj
    return finals[0] if finals else result.trajectories[0]


def to_response(state: AppState, result: SolveResult) -> SolveResponse:
    main = main_trajectory(result)
    vote = result.vote
    return SolveResponse(
        answer=result.answer,
        correct=result.correct,
        gold=result.gold,
        vote=VoteOut(answer=vote.answer, shares=vote.shares, counts=vote.counts, k=vote.k) if vote else None,
        trajectory_id=main.id,
        trajectory_ids=result.trajectory_ids,
        model_version=result.model_version,
        mode=result.mode,
        finish_reason=main.finish_reason,
        text=readable(state, main.response_text()),
        calls=[call_out(c.turn, c.code, c.result) for c in main.calls],
        elapsed_ms=result.elapsed_ms,
    )


def usage_of(traj: Trajectory) -> tuple[int, int]:
    """(prompt tokens, generated tokens) of one trajectory; observations count as prompt."""
    generated = sum(len(s.token_ids) for s in traj.segments if s.kind is SegmentKind.model)
    return len(traj.token_ids()) - generated, generated


async def events(state: AppState, args: SolveArgs) -> AsyncGenerator[Any, None]:
    """The solver's events as wire events; the last one is the :class:`SolveResult`.

    Validation errors surface before the first event (the caller can still answer 4xx).
    Closing this iterator cancels the solve (generation stops, the sandbox session closes).
    """
    require_solver(state)
    state.metrics.in_flight.inc()
    finished = False
    try:
        async with pinned_solver(state) as solver, contextlib.aclosing(
            solver.stream(args.problem, **args.kwargs(), stream_text=True)
        ) as stream:
            async for ev in stream:
                tags = {"trajectory_id": ev.trajectory_id, "sample": ev.sample, "revision": ev.revision} if not isinstance(
                    ev, SolveDone) else {}
                if isinstance(ev, EpisodeStart):
                    yield StartEv(model_version=ev.model_version, **tags)
                elif isinstance(ev, TextDelta):
                    yield TextEv(turn=ev.turn, text=readable(state, ev.text), **tags)
                elif isinstance(ev, CodeCell):
                    yield CodeEv(turn=ev.turn, code=ev.code, **tags)
                elif isinstance(ev, SandboxOutput):
                    r = ev.result
                    yield ObservationEv(turn=ev.turn, status=str(r.status), stdout=r.stdout, stderr=r.stderr,
                                        detail=r.detail, wall_ms=r.wall_ms, text=ev.text, **tags)
                elif isinstance(ev, AnswerEvent):
                    yield AnswerEv(answer=ev.answer, correct=ev.correct, **tags)
                elif isinstance(ev, EpisodeDone):
                    state.metrics.record_trajectory(ev.trajectory)
                    t = ev.trajectory
                    yield EpisodeDoneEv(finish_reason=t.finish_reason, answer=t.answer, correct=t.correct, **tags)
                elif isinstance(ev, SolveDone):
                    finished = True
                    yield ev.result
    except SolveError as exc:
        raise ApiError(422, str(exc), code="invalid_solve") from None
    except ContextTooLong as exc:
        raise _too_long(exc) from None
    finally:
        state.metrics.in_flight.dec()
        if not finished:
            state.metrics.episodes_cancelled.inc()


async def first_event(it: AsyncIterator[Any]) -> Any:
    """Pull the first event (so bad arguments become a 4xx before the stream starts)."""
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        raise ApiError(500, "the solve produced no events", code="empty_stream") from None


async def respond_once(
    state: AppState, request: Request, route: str, idempotency_key: str | None, body: dict[str, Any],
    work: Callable[[], Awaitable[dict[str, Any]]],
) -> JSONResponse:
    """A non-streamed solve response: ``work`` runs once per Idempotency-Key (a repeat gets the
    stored answer); the headers name the model version and the trajectory."""
    if idempotency_key is None:
        payload, replayed = await work(), False
    else:
        assert state.idempotency is not None
        payload, replayed = await state.idempotency.run_once(route, client_key(request), idempotency_key, body, work)
    headers = {"x-model-version": payload["model_version"]}
    if payload.get("trajectory_id"):
        headers["x-trajectory-id"] = payload["trajectory_id"]
    if replayed:
        headers["idempotent-replayed"] = "true"
    return JSONResponse(payload, headers=headers)
