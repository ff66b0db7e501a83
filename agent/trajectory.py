"""The trajectory record: exactly the tokens the model saw and produced, tagged by producer.

Every loss mask in the trainer is built from ``Segment.kind``: ``model`` segments are the
tokens the engine sampled (including its own stop / end-of-turn tokens), ``prompt`` and
``observation`` segments were injected. Concatenating every segment's ``token_ids`` in order
reproduces the full sequence the engine consumed, with no re-tokenisation.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum

from pydantic import BaseModel, Field

from agent.limits import MAX_TOTAL_TOKENS, MaxTotalTokens
from sandbox.result import ExecResult

SCHEMA_VERSION = 1


class SegmentKind(StrEnum):
    prompt = "prompt"
    model = "model"
    observation = "observation"


class Mode(StrEnum):
    tir = "tir"  # tool-integrated reasoning (python blocks + sandbox)
    cot = "cot"  # plain chain of thought (IRPO prompt)
    arc = "arc"  # multiple choice, answer is a letter


class Source(StrEnum):
    api = "api"
    rollout = "rollout"
    eval = "eval"
    gold = "gold"  # a gold solution rendered as a trajectory (IRPO adds it to the winners)


class EpisodeEnd(StrEnum):
    """Why an episode ended (a completion's own end is :class:`agent.engines.base.FinishReason`)."""

    answer = "answer"
    turn_limit = "turn_limit"
    token_budget = "token_budget"
    no_answer = "no_answer"  # the model stopped (end of turn) without a final answer
    cancelled = "cancelled"
    error = "error"


class Feedback(StrEnum):
    up = "up"  # a user's thumbs-up
    down = "down"  # a user's thumbs-down


class Segment(BaseModel):
    kind: SegmentKind
    text: str
    token_ids: list[int]


class SandboxCall(BaseModel):
    turn: int
    code: str
    result: ExecResult


class SamplingParams(BaseModel):
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = Field(512, description="per model turn")
    max_total_tokens: MaxTotalTokens = MAX_TOTAL_TOKENS
    max_completion_tokens: int | None = Field(None, description="the reply's model tokens, all turns (a chat max_tokens)")
    seed: int | None = None


class Timings(BaseModel):
    total_ms: float = 0.0
    generate_ms: float = 0.0
    sandbox_ms: float = 0.0


class Trajectory(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    problem_id: str | None = None
    problem: str
    gold: str | None = None
    mode: Mode = Mode.tir
    segments: list[Segment] = Field(default_factory=list)
    calls: list[SandboxCall] = Field(default_factory=list)
    answer: str | None = None
    correct: bool | None = None
    finish_reason: EpisodeEnd | None = None
    model_version: str = ""
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    timings: Timings = Field(default_factory=Timings)
    source: Source = Source.api
    parent_id: str | None = Field(None, description="the trajectory this one revises (SRPO self-revision)")
    context_messages: int = Field(
        0, description="messages in the prompt besides ours and the problem (a chat's system prompt, earlier turns)")
    feedback: Feedback | None = Field(None, description="a user's thumbs-up/down (the trainer's feedback pairs)")
    created_at: float = Field(default_factory=time.time)

    def token_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    def model_mask(self) -> list[int]:
        """1 for each token the model produced, 0 for prompt and observation tokens."""
        return [int(s.kind is SegmentKind.model) for s in self.segments for _ in s.token_ids]

    @property
    def standalone(self) -> bool:
        """The problem alone reproduces this prompt: no chat context. Only such trajectories are
        trained on (a follow-up such as "now double it" is no problem by itself)."""
        return self.context_messages == 0

    @property
    def n_tool_calls(self) -> int:
        return len(self.calls)

    def response_text(self) -> str:
        """Everything after the prompt: model turns and observations, as the model saw them."""
        return "".join(s.text for s in self.segments if s.kind is not SegmentKind.prompt)
