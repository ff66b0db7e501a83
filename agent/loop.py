"""One agent episode: the multi-turn code-and-observe state machine.

The model writes reasoning and a ```python block; generation stops when the block closes (and
at "```output", which cuts a hallucinated output block); the code runs in this episode's sandbox
session; the result is injected as a ```output block; the model continues in the same assistant
turn. The episode ends at a final answer (``\\boxed{}`` / "Final answer:"), at the end-of-turn
token, at the tool-call limit, or when a token budget runs out.

The loop works in token ids only: the prompt ids come from the engine's chat template, the
model ids are exactly what the engine sampled, observation ids are the encoding of the injected
text. Each generation request is the concatenation of every segment so far, so the trajectory's
segments reproduce the exact sequence the engine consumed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from pydantic import BaseModel, Field

from agent import prompts
from agent.conversation import Conversation
from agent.engines.base import Completion, Engine, FinishReason, GenerationRequest
from agent.events import (
    AnswerEvent,
    CodeCell,
    EpisodeDone,
    EpisodeEvent,
    EpisodeStart,
    SandboxOutput,
    TextDelta,
)
from agent.grading import extract_answer, is_equiv_async
from agent.limits import (
    MAX_NEW_TOKENS,
    MAX_TOTAL_TOKENS,
    MAX_TURNS,
    OBSERVATION_MAX_CHARS,
    SANDBOX_TIMEOUT_S,
    MaxNewTokens,
    MaxTotalTokens,
    MaxTurns,
    ObservationMaxChars,
    SandboxTimeout,
)
from agent.observation import format_observation, output_block
from agent.trajectory import (
    EpisodeEnd,
    Mode,
    SamplingParams,
    SandboxCall,
    Segment,
    SegmentKind,
    Source,
    Trajectory,
)
from sandbox.result import ExecResult, ExecStatus

log = logging.getLogger(__name__)

# A model turn stopped at a fence that opened a block rather than closed one is continued, at
# most this many times per turn (a runaway of empty fences must still end).
MAX_CONTINUATIONS = 3
# Below this many tokens of episode budget a new turn is pointless.
MIN_TURN_TOKENS = 8


class Sandbox(Protocol):
    """What the loop needs from the sandbox client (``sandbox.client.SandboxClient``)."""

    async def execute(
        self, code: str, *, session_id: str | None = None, timeout_s: float | None = None, memory_mb: int | None = None
    ) -> ExecResult: ...

    async def close_session(self, session_id: str) -> None: ...


class EpisodeConfig(BaseModel):
    """Everything that shapes one episode besides the problem."""

    mode: Mode = Mode.tir
    max_turns: MaxTurns = MAX_TURNS
    max_new_tokens: MaxNewTokens = MAX_NEW_TOKENS
    max_total_tokens: MaxTotalTokens = MAX_TOTAL_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    version: str | None = Field(None, description="the model version this episode is pinned to")
    sandbox_timeout_s: SandboxTimeout = SANDBOX_TIMEOUT_S
    sandbox_memory_mb: int | None = None
    observation_max_chars: ObservationMaxChars = OBSERVATION_MAX_CHARS
    source: Source = Source.api
    stream_text: bool = Field(False, description="stream model text token by token (engine.stream)")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="model tokens of the whole reply, every turn (a chat request's max_tokens)")


_FENCE_RE = re.compile(r"^[ \t]*```", re.MULTILINE)
_CODE_RE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL)


def open_fence(text: str) -> bool:
    """True when ``text`` leaves a fenced block open (an odd number of line-start fences)."""
    return len(_FENCE_RE.findall(text)) % 2 == 1


def pending_code(turn_text: str) -> str | None:
    """The code of the block that ends this model turn, or None when the turn ends otherwise.

    A turn ends with code when its last fenced block is closed and nothing but whitespace or a
    cut "```output" follows the closing fence.
    """
    last = None
    for m in _CODE_RE.finditer(turn_text):
        last = m
    if last is None:
        return None
    tail = turn_text[last.end() :].strip()
    # "output" right after the closing fence: the block was closed by the cut "```output" itself
    if tail not in ("", "output", prompts.OUTPUT_FENCE):
        return None
    code = last.group(1)
    return code if code.strip() else None


def _stop_after_output_fence(text: str) -> bool:
    return text.rstrip().endswith(prompts.OUTPUT_FENCE)


async def _generate(engine: Engine, request: GenerationRequest, cfg: EpisodeConfig) -> AsyncGenerator[Completion | str, None]:
    """Yield text pieces (when streaming) and finally the Completion."""
    if cfg.stream_text:
        stream = engine.stream(request)
        try:
            async for delta in stream:
                if delta.text:
                    yield delta.text
                if delta.done is not None:
                    yield delta.done
                    return
        finally:  # closing the engine's stream cancels its generation
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        raise RuntimeError("engine stream ended without a final completion")
    (completion,) = await engine.generate(request)
    yield completion


async def run_episode(
    engine: Engine,
    sandbox: Sandbox | None,
    problem: str,
    cfg: EpisodeConfig,
    *,
    gold: str | None = None,
    user_text: str | None = None,
    problem_id: str | None = None,
    parent_id: str | None = None,
    sample: int = 0,
    revision: int = 0,
    conversation: Conversation | None = None,
) -> AsyncIterator[EpisodeEvent]:
    """Run one episode, yielding events; the last event is :class:`EpisodeDone`.

    ``user_text`` overrides the user message (the self-revision prompt). ``conversation`` (a
    chat's system prompt and earlier turns, already fitted to the budget) goes into the prompt
    before the user message; the trajectory's prompt segment holds exactly those tokens. Closing the iterator
    early stops generation (the engine stream is closed or the pending request cancelled) and
    closes the sandbox session.
    """
    t0 = time.perf_counter()
    version = cfg.version or engine.model_version
    traj = Trajectory(
        problem_id=problem_id,
        problem=problem,
        gold=gold,
        mode=cfg.mode,
        model_version=version,
        source=cfg.source,
        parent_id=parent_id,
        sampling=SamplingParams(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            max_total_tokens=cfg.max_total_tokens,
            max_completion_tokens=cfg.max_completion_tokens,
            seed=cfg.seed,
        ),
        context_messages=conversation.context_messages if conversation is not None else 0,
    )
    tags = {"trajectory_id": traj.id, "sample": sample, "revision": revision}
    user = user_text if user_text is not None else prompts.user_message(problem, cfg.mode, max_turns=cfg.max_turns)
    if conversation is None:
        prompt_ids = engine.chat_prefix(prompts.messages(user))
    else:
        prompt_ids = engine.chat_prefix(
            prompts.messages(user, system=conversation.system, history=conversation.history()))
    traj.segments.append(Segment(kind=SegmentKind.prompt, text=engine.decode(prompt_ids), token_ids=list(prompt_ids)))
    ids: list[int] = list(prompt_ids)
    stop = prompts.stop_strings(cfg.mode)
    session_id: str | None = None
    generate_s = sandbox_s = 0.0
    generated = 0  # model tokens so far (the reply's length, bounded by max_completion_tokens)
    reply_cap = cfg.max_completion_tokens
    finish: EpisodeEnd | None = None
    yield EpisodeStart(model_version=version, parent_id=parent_id, **tags)

    try:
        turn = 0
        while finish is None:
            # ---- one model turn (continued while it stopped at a fence that opened a block)
            turn_ids: list[int] = []
            last: Completion | None = None
            for _ in range(MAX_CONTINUATIONS + 1):
                budget = min(cfg.max_new_tokens - len(turn_ids), cfg.max_total_tokens - len(ids) - len(turn_ids))
                if reply_cap is not None:
                    budget = min(budget, reply_cap - generated - len(turn_ids))
                if budget <= 0:
                    break
                request = GenerationRequest(
                    prompt_ids=ids + turn_ids,
                    max_new_tokens=budget,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    seed=None if cfg.seed is None else cfg.seed + 1000 * turn + len(turn_ids),
                    stop=stop,
                    version=version,
                )
                g0 = time.perf_counter()
                async with contextlib.aclosing(_generate(engine, request, cfg)) as gen:  # closes the engine stream
                    async for item in gen:
                        if isinstance(item, str):
                            yield TextDelta(turn=turn, text=item, **tags)
                        else:
                            last = item
                generate_s += time.perf_counter() - g0
                assert last is not None
                if not cfg.stream_text and last.text:
                    yield TextDelta(turn=turn, text=last.text, **tags)
                turn_ids.extend(last.token_ids)
                if last.model_version and last.model_version != version:
                    log.warning("engine answered with version %s for an episode pinned to %s", last.model_version, version)
                text_so_far = engine.decode(turn_ids)
                if not (
                    last.finish_reason is FinishReason.stop
                    and last.stop_string == prompts.FENCE_CLOSE
                    and open_fence(text_so_far)
                ):
                    break
            if turn_ids:
                traj.segments.append(
                    Segment(kind=SegmentKind.model, text=engine.decode(turn_ids), token_ids=turn_ids)
                )
                ids.extend(turn_ids)
                generated += len(turn_ids)
            turn_text = engine.decode(turn_ids)

            if last is None:  # no budget left for even one token
                finish = EpisodeEnd.token_budget
                break
            if last.finish_reason is FinishReason.cancelled:
                finish = EpisodeEnd.cancelled
                break

            code = pending_code(turn_text) if cfg.mode is Mode.tir and sandbox is not None else None
            if code is None:
                if extract_answer(turn_text, cfg.mode) is not None:
                    finish = EpisodeEnd.answer
                elif last.finish_reason is FinishReason.length:
                    finish = EpisodeEnd.token_budget
                else:  # end of turn (or a stray fence) without an answer
                    finish = EpisodeEnd.no_answer
                break
            if len(traj.calls) >= cfg.max_turns:
                finish = EpisodeEnd.turn_limit
                break
            if reply_cap is not None and generated >= reply_cap:  # no tokens left to read the output
                finish = EpisodeEnd.token_budget
                break

            # ---- run the block in this episode's session and inject the output
            yield CodeCell(turn=turn, code=code, **tags)
            s0 = time.perf_counter()
            assert sandbox is not None
            try:
                result = await sandbox.execute(
                    code,
                    session_id=session_id or traj.id,
                    timeout_s=cfg.sandbox_timeout_s,
                    memory_mb=cfg.sandbox_memory_mb,
                )
            except Exception as exc:  # the executor failed (connection refused, protocol error...)
                log.warning("sandbox call failed: %s", exc)
                result = ExecResult(status=ExecStatus.sandbox_error, detail=f"{type(exc).__name__}: {exc}"[:300])
            sandbox_s += time.perf_counter() - s0
            session_id = result.session_id or session_id or traj.id
            traj.calls.append(SandboxCall(turn=turn, code=code, result=result))
            body = format_observation(result, max_chars=cfg.observation_max_chars)
            obs_text = output_block(body, after_fence_stop=_stop_after_output_fence(turn_text))
            if not turn_text.endswith("\n") and not obs_text.startswith("\n"):
                obs_text = "\n" + obs_text
            obs_ids = engine.encode(obs_text)
            traj.segments.append(Segment(kind=SegmentKind.observation, text=obs_text, token_ids=obs_ids))
            ids.extend(obs_ids)
            yield SandboxOutput(turn=turn, result=result, text=obs_text, **tags)
            if cfg.max_total_tokens - len(ids) < MIN_TURN_TOKENS:
                finish = EpisodeEnd.token_budget
                break
            turn += 1
    finally:
        if session_id is not None and sandbox is not None:
            try:
                await sandbox.close_session(session_id)
            except Exception as exc:  # closing is best effort; the sandbox reaps idle sessions
                log.debug("close_session(%s) failed: %s", session_id, exc)

    model_text = "".join(s.text for s in traj.segments if s.kind is SegmentKind.model)
    traj.answer = extract_answer(model_text, cfg.mode)
    traj.finish_reason = finish
    if gold is not None:
        traj.correct = await is_equiv_async(traj.answer, gold, cfg.mode)
    traj.timings.generate_ms = generate_s * 1000
    traj.timings.sandbox_ms = sandbox_s * 1000
    traj.timings.total_ms = (time.perf_counter() - t0) * 1000
    yield AnswerEvent(answer=traj.answer, correct=traj.correct, **tags)
    yield EpisodeDone(trajectory=traj, **tags)


async def run_to_end(
    engine: Engine, sandbox: Sandbox | None, problem: str, cfg: EpisodeConfig, **kwargs: object
) -> Trajectory:
    """Run one episode and return its trajectory (events discarded)."""
    traj: Trajectory | None = None
    async for event in run_episode(engine, sandbox, problem, cfg, **kwargs):  # type: ignore[arg-type]
        if isinstance(event, EpisodeDone):
            traj = event.trajectory
    assert traj is not None
    return traj
