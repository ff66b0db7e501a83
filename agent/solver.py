"""The solver: what the gateway, the CLI, evaluation and rollouts call to solve a problem.

One :class:`Solver` wraps an engine, a sandbox client, a trajectory log and settings. A solve
runs ``samples`` episodes concurrently (the engine batches them), optionally revises each one
``revisions`` times with the SRPO revision prompt (every revision kept, linked by
``parent_id``), takes a majority vote over the samples' final answers, grades against the gold
answer when one is given, and appends every finished trajectory to the log. The whole solve is
pinned to the model version active at admission.

``stream`` yields typed events as episodes progress; closing it early (the client went away)
cancels the running episodes, which stops their generation and closes their sandbox sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel, Field

from agent import prompts
from agent.conversation import Conversation, fit, prompt_limit
from agent.engines.base import Engine
from agent.events import EpisodeDone, EpisodeEvent, SolveDone, SolveResult
from agent.grading import is_equiv_async, majority_vote
from agent.limits import (
    MAX_NEW_TOKENS,
    MAX_TOTAL_TOKENS,
    MAX_TURNS,
    OBSERVATION_MAX_CHARS,
    SAMPLE_TEMPERATURE,
    SANDBOX_TIMEOUT_S,
    MaxNewTokens,
    MaxTotalTokens,
    MaxTurns,
    ObservationMaxChars,
    SampleTemperature,
    SandboxTimeout,
)
from agent.loop import EpisodeConfig, Sandbox, run_episode
from agent.trajectory import Mode, Source, Trajectory
from agent.trajlog import TrajectorySink

log = logging.getLogger(__name__)


class SolverSettings(BaseModel):
    """Defaults of every solve (a call may override turns and temperature)."""

    max_turns: MaxTurns = MAX_TURNS
    max_new_tokens: MaxNewTokens = MAX_NEW_TOKENS
    max_total_tokens: MaxTotalTokens = MAX_TOTAL_TOKENS
    sample_temperature: SampleTemperature = SAMPLE_TEMPERATURE
    top_p: float = 1.0
    sandbox_timeout_s: SandboxTimeout = SANDBOX_TIMEOUT_S
    sandbox_memory_mb: int | None = None
    observation_max_chars: ObservationMaxChars = OBSERVATION_MAX_CHARS
    max_samples: int = Field(64, ge=1)
    max_revisions: int = Field(8, ge=0)


class SolveError(ValueError):
    """Bad solve arguments (the gateway maps this to a 4xx)."""


class Solver:
    def __init__(
        self,
        engine: Engine,
        sandbox: Sandbox | None,
        trajectory_log: TrajectorySink | None = None,
        settings: SolverSettings | None = None,
    ) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.log = trajectory_log
        self.settings = settings or SolverSettings()

    def _config(
        self, mode: Mode, max_turns: int | None, temperature: float, seed: int | None, version: str,
        source: Source, stream_text: bool, top_p: float | None = None, max_completion_tokens: int | None = None,
    ) -> EpisodeConfig:
        s = self.settings
        return EpisodeConfig(
            mode=mode,
            max_turns=s.max_turns if max_turns is None else max_turns,
            max_new_tokens=s.max_new_tokens,
            max_total_tokens=s.max_total_tokens,
            temperature=temperature,
            top_p=s.top_p if top_p is None else top_p,
            seed=seed,
            version=version,
            sandbox_timeout_s=s.sandbox_timeout_s,
            sandbox_memory_mb=s.sandbox_memory_mb,
            observation_max_chars=s.observation_max_chars,
            source=source,
            stream_text=stream_text,
            max_completion_tokens=max_completion_tokens,
        )

    def fit_conversation(self, conversation: Conversation, problem: str, mode: Mode, max_turns: int) -> Conversation:
        """The conversation with its oldest turns dropped until the prompt leaves the episode room
        (:mod:`agent.conversation`); raises ``ContextTooLong`` when the problem alone does not fit."""
        user = prompts.user_message(problem, mode, max_turns=max_turns)

        def prompt_len(c: Conversation) -> int:
            return len(self.engine.chat_prefix(prompts.messages(user, system=c.system, history=c.history())))

        return fit(conversation, prompt_len, prompt_limit(self.settings.max_new_tokens, self.settings.max_total_tokens))

    async def _record(self, traj: Trajectory) -> None:
        if self.log is None:
            return
        try:
            await self.log.append(traj)
        except Exception:  # the log spools when Redis is down; anything else must not lose the answer
            log.exception("could not log trajectory %s", traj.id)

    async def _chain(
        self, queue: asyncio.Queue[EpisodeEvent], problem: str, gold: str | None, cfg: EpisodeConfig,
        revisions: int, sample: int, problem_id: str | None, conversation: Conversation | None = None,
    ) -> list[Trajectory]:
        """One sample and its revisions; events go to ``queue``, trajectories are logged as they finish."""
        chain: list[Trajectory] = []
        parent: Trajectory | None = None
        for rev in range(revisions + 1):
            user_text = None
            if parent is not None:
                user_text = prompts.revision_message(problem, cfg.mode, parent.response_text(), max_turns=cfg.max_turns)
            rcfg = cfg if cfg.seed is None else cfg.model_copy(update={"seed": cfg.seed + 7919 * rev})
            async for event in run_episode(
                self.engine, self.sandbox, problem, rcfg, gold=gold, user_text=user_text, problem_id=problem_id,
                parent_id=parent.id if parent else None, sample=sample, revision=rev, conversation=conversation,
            ):
                if isinstance(event, EpisodeDone):
                    await self._record(event.trajectory)
                    chain.append(event.trajectory)
                    parent = event.trajectory
                await queue.put(event)
        return chain

    def _validate(self, problem: str, mode: Mode | str, samples: int, revisions: int, max_turns: int | None) -> Mode:
        if not problem or not problem.strip():
            raise SolveError("problem is empty")
        try:
            m = Mode(mode)
        except ValueError:
            raise SolveError(f"unknown mode {mode!r}: use one of {[x.value for x in Mode]}") from None
        if not 1 <= samples <= self.settings.max_samples:
            raise SolveError(f"samples must be between 1 and {self.settings.max_samples}")
        if not 0 <= revisions <= self.settings.max_revisions:
            raise SolveError(f"revisions must be between 0 and {self.settings.max_revisions}")
        if max_turns is not None and not 0 <= max_turns <= 64:
            raise SolveError("max_turns must be between 0 and 64")
        if m is Mode.tir and self.sandbox is None:
            raise SolveError("mode 'tir' needs a sandbox")
        return m

    async def stream(
        self,
        problem: str,
        *,
        gold: str | None = None,
        mode: Mode | str = Mode.tir,
        max_turns: int | None = None,
        samples: int = 1,
        temperature: float | None = None,
        revisions: int = 0,
        source: Source | str = Source.api,
        seed: int | None = None,
        problem_id: str | None = None,
        stream_text: bool = True,
        conversation: Conversation | None = None,
        top_p: float | None = None,
        max_completion_tokens: int | None = None,
    ) -> AsyncGenerator[EpisodeEvent | SolveDone, None]:
        """Yield episode events as they happen, then one :class:`SolveDone`.

        Arguments are validated before the first event (a :class:`SolveError` on bad input, a
        ``ContextTooLong`` when ``conversation`` and the problem leave the episode no room).
        ``conversation``: a chat's system prompt and earlier turns (every episode sees them).
        ``max_completion_tokens``: each episode's reply, all turns, at most this many model tokens.
        """
        m = self._validate(problem, mode, samples, revisions, max_turns)
        if conversation is not None:
            turns = self.settings.max_turns if max_turns is None else max_turns
            conversation = self.fit_conversation(conversation, problem, m, turns)
        t0 = time.perf_counter()
        version = self.engine.model_version  # pinned at admission for every episode of this solve
        temp = temperature if temperature is not None else (self.settings.sample_temperature if samples > 1 else 0.0)
        queue: asyncio.Queue[EpisodeEvent] = asyncio.Queue()
        tasks = [
            asyncio.create_task(
                self._chain(
                    queue, problem, gold,
                    self._config(m, max_turns, temp, None if seed is None else seed + i, version, Source(source), stream_text,
                                 top_p, max_completion_tokens),
                    revisions, i, problem_id, conversation,
                )
            )
            for i in range(samples)
        ]
        getter: asyncio.Future[EpisodeEvent] | None = None
        try:
            pending = set(tasks)
            while pending or not queue.empty():
                if queue.empty():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, *pending}, return_when=asyncio.FIRST_COMPLETED)
                    pending -= done
                    for t in done:
                        if t is not getter and t.exception() is not None:
                            raise t.exception()  # type: ignore[misc]
                    if getter in done:
                        yield getter.result()
                    else:
                        getter.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await getter
                else:
                    yield queue.get_nowait()
            chains = [t.result() for t in tasks]
        finally:  # a consumer that stops early (a client gone) leaves no task pending, the queue getter included
            leftovers: list[asyncio.Future[Any]] = [*tasks, *([getter] if getter is not None else [])]
            for f in leftovers:
                f.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        trajectories = sorted((t for c in chains for t in c), key=lambda t: t.created_at)
        finals = [c[-1] for c in chains]
        vote = majority_vote([t.answer for t in finals], m) if samples > 1 else None
        answer = vote.answer if vote is not None else finals[0].answer
        correct = None
        if gold is not None:
            correct = finals[0].correct if vote is None else await is_equiv_async(answer, gold, m)
        yield SolveDone(
            result=SolveResult(
                answer=answer,
                correct=correct,
                gold=gold,
                vote=vote,
                model_version=version,
                mode=m,
                trajectory_ids=[t.id for t in trajectories],
                final_ids=[t.id for t in finals],
                trajectories=trajectories,
                elapsed_ms=(time.perf_counter() - t0) * 1000,
            )
        )

    async def solve(
        self,
        problem: str,
        *,
        gold: str | None = None,
        mode: Mode | str = Mode.tir,
        max_turns: int | None = None,
        samples: int = 1,
        temperature: float | None = None,
        revisions: int = 0,
        source: Source | str = Source.api,
        seed: int | None = None,
        problem_id: str | None = None,
        conversation: Conversation | None = None,
        top_p: float | None = None,
        max_completion_tokens: int | None = None,
    ) -> SolveResult:
        """Solve and return the result (episodes generate with ``engine.generate``, batched)."""
        stream = self.stream(
            problem, gold=gold, mode=mode, max_turns=max_turns, samples=samples, temperature=temperature,
            revisions=revisions, source=source, seed=seed, problem_id=problem_id, stream_text=False,
            conversation=conversation, top_p=top_p, max_completion_tokens=max_completion_tokens,
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, SolveDone):
                    return event.result
        raise RuntimeError("solve ended without a result")
