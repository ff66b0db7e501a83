"""Typed events of a streamed solve: what a client sees while episodes run.

Every event names its trajectory and sample index, so interleaved episodes (samples > 1,
revisions) can be told apart. The stream ends with one :class:`SolveDone` carrying the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field

from agent.trajectory import Trajectory
from sandbox.result import ExecResult

if TYPE_CHECKING:
    pass


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
    type: Literal["done"] = "done"
    trajectory: Trajectory


EpisodeEvent = Annotated[
    EpisodeStart | TextDelta | CodeCell | SandboxOutput | AnswerEvent | EpisodeDone, Field(discriminator="type")
]
