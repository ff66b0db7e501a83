"""Wire models of the gateway's own endpoints: solve, its stream events, trajectories, feedback.

Request models bound every field with hard limits (the OpenAPI schema shows them); the
configurable, tighter per-deployment caps are checked in :mod:`api.solving` with the same
error shape. Text fields refuse NUL and lone surrogates (they break tokenizers and logs).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent.trajectory import EpisodeEnd, Mode, Trajectory
from sandbox.result import ExecResult

HARD_MAX_CHARS = 100_000
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Refuse text that cannot be tokenised or logged safely."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode (lone surrogate found)")
    return value


def non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


Text = Annotated[str, Field(max_length=HARD_MAX_CHARS), AfterValidator(clean_text)]
Problem = Annotated[str, Field(min_length=1, max_length=HARD_MAX_CHARS), AfterValidator(clean_text), AfterValidator(non_blank)]
TrajectoryId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    problem: Problem = Field(description="the math problem, plain text or LaTeX")
    gold: Annotated[str, Field(max_length=1000), AfterValidator(clean_text)] | None = Field(
        None, description="the known answer: the response says whether the agent got it right"
    )
    mode: Mode = Field(Mode.tir, description="tir = Python tool use (default), cot = plain reasoning, arc = multiple choice")
    max_turns: int | None = Field(None, ge=0, le=64, description="tool calls at most (default: the server's)")
    samples: int = Field(1, ge=1, le=64, description="k > 1: sample k solutions and majority-vote the answer")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="default: 0 (greedy) for one sample, 0.8 for several")
    revisions: int = Field(0, ge=0, le=8, description="self-revision rounds after each sample")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stream: bool = Field(False, description="server-sent events for each step")


class VoteOut(BaseModel):
    answer: str | None
    shares: dict[str, float]
    counts: dict[str, int]
    k: int


class CallOut(BaseModel):
    """One code cell and what the sandbox made of it."""

    turn: int
    code: str
    status: str
    stdout: str
    stderr: str
    wall_ms: float


class SolveResponse(BaseModel):
    answer: str | None = Field(description="the final answer (the majority vote when samples > 1)")
    correct: bool | None = Field(None, description="the grade against `gold`, when it was given")
    gold: str | None = None
    vote: VoteOut | None = Field(None, description="answer shares over the samples (samples > 1)")
    trajectory_id: str = Field(description="the trajectory behind the answer: feedback goes to this id")
    trajectory_ids: list[str] = Field(description="every trajectory of this solve")
    model_version: str
    mode: Mode
    finish_reason: EpisodeEnd | None = None
    text: str = Field(description="the model's response with its code and output blocks, as the model saw them")
    calls: list[CallOut]
    elapsed_ms: float
    feedback_token: str | None = Field(
        None, description="send it with feedback on `trajectory_id` (POST /v1/trajectories/{id}/feedback): it "
        "proves the feedback comes from whoever solved it, so its answer may become a training label"
    )


# ---- the events of `POST /v1/solve` with `stream: true` (SSE `event:` = `type`)


class _Ev(BaseModel):
    trajectory_id: str
    sample: int = 0
    revision: int = 0


class StartEv(_Ev):
    type: Literal["start"] = "start"
    model_version: str


class TextEv(_Ev):
    type: Literal["text"] = "text"
    turn: int
    text: str


class CodeEv(_Ev):
    type: Literal["code"] = "code"
    turn: int
    code: str


class ObservationEv(_Ev):
    type: Literal["observation"] = "observation"
    turn: int
    status: str
    stdout: str
    stderr: str
    detail: str | None = None
    wall_ms: float
    text: str


class AnswerEv(_Ev):
    type: Literal["answer"] = "answer"
    answer: str | None
    correct: bool | None = None


class EpisodeDoneEv(_Ev):
    type: Literal["episode_done"] = "episode_done"
    finish_reason: EpisodeEnd | None
    answer: str | None
    correct: bool | None


class ResultEv(BaseModel):
    type: Literal["done"] = "done"
    result: SolveResponse


class ErrorEv(BaseModel):
    type: Literal["error"] = "error"
    error: dict[str, Any]


def call_out(turn: int, code: str, result: ExecResult) -> CallOut:
    return CallOut(turn=turn, code=code, status=str(result.status), stdout=result.stdout, stderr=result.stderr,
                   wall_ms=result.wall_ms)


# ---- trajectories and feedback


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rating: Literal["up", "down"]
    answer: Annotated[str, Field(max_length=1000), AfterValidator(clean_text)] | None = Field(
        None, description="the correct answer, if the user knows it"
    )
    comment: Annotated[str, Field(max_length=4000), AfterValidator(clean_text)] | None = None
    feedback_token: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")] | None = Field(
        None, description="the `feedback_token` of the solve that produced this trajectory: with it (or the admin "
        "token) the feedback is trusted and its answer becomes a training label; without it, it counts as a vote"
    )


class FeedbackOut(BaseModel):
    id: str
    trajectory_id: str
    rating: Literal["up", "down"] | None
    corrected_answer: str | None
    comment: str | None
    created_at: float
    trusted: bool = Field(False, description="from the caller who solved it (its feedback token) or an admin: "
                          "a training label; otherwise a vote")


class TrajectoryOut(BaseModel):
    trajectory: Trajectory
    feedback: list[FeedbackOut]
