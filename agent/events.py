"""What a solve yields: typed events while its episodes run, then its result.

Every event names its trajectory and sample index, so interleaved episodes (samples > 1,
revisions) can be told apart. An episode ends with :class:`EpisodeDone` (``episode_done``); the
whole solve ends with one :class:`SolveDone` (``done``) carrying the :class:`SolveResult`. The
gateway streams these same names as server-sent events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, computed_field

from agent.grading import Vote
from agent.trajectory import Mode, Trajectory
from sandbox.result import ExecResult


class _EpisodeEvent(BaseModel):
    trajectory_id: str
    sample: int = Field(0, description="which of the k samples this episode belongs to")
    revision: int = Field(0, description="0 = the first attempt, n = the n-th self-revision")


class EpisodeStart(_EpisodeEvent):
    type: Literal["start"] = "start"
    model_version: str
    parent_id: str | None = None


class TextDelta(_EpisodeEvent):
    """Model text as it is generated (one delta per streamed piece, or one per turn)."""

    type: Literal["text"] = "text"
    turn: int
    text: str


class CodeCell(_EpisodeEvent):
    type: Literal["code"] = "code"
    turn: int
    code: str


class SandboxOutput(_EpisodeEvent):
    type: Literal["observation"] = "observation"
    turn: int
    result: ExecResult
    text: str = Field(description="the ```output block injected into the model's context")


class AnswerEvent(_EpisodeEvent):
    type: Literal["answer"] = "answer"
    answer: str | None
    correct: bool | None = None


class EpisodeDone(_EpisodeEvent):
    type: Literal["episode_done"] = "episode_done"
    trajectory: Trajectory


EpisodeEvent = Annotated[
    EpisodeStart | TextDelta | CodeCell | SandboxOutput | AnswerEvent | EpisodeDone, Field(discriminator="type")
]


class SolveResult(BaseModel):
    """The outcome of one solve."""

    answer: str | None = Field(description="the answer (majority vote of the samples' final answers when samples > 1)")
    correct: bool | None = Field(None, description="set when a gold answer was given")
    gold: str | None = None
    vote: Vote | None = Field(None, description="vote counts and shares, when samples > 1")
    model_version: str
    mode: Mode
    trajectory_ids: list[str] = Field(description="every trajectory of this solve (samples and revisions), by start time")
    final_ids: list[str] = Field(description="per sample, the id of its last revision (or of the sample itself)")
    trajectories: list[Trajectory]
    elapsed_ms: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def vote_shares(self) -> dict[str, float] | None:
        return self.vote.shares if self.vote is not None else None


class SolveDone(BaseModel):
    """The last event of a streamed solve."""

    type: Literal["done"] = "done"
    result: SolveResult


SolveEvent = Annotated[EpisodeEvent | SolveDone, Field(discriminator="type")]
