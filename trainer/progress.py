"""Progress of a retrain run: one typed snapshot the driver reports after every change.

The driver knows nothing about where progress goes: the worker stores it in the job record in
Redis (``trainer.jobs``), ``mathagent iterate`` prints it. Both receive a :class:`Progress`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum

from pydantic import BaseModel, Field


class Phase(StrEnum):
    queued = "queued"
    base = "base"
    prompts = "prompts"
    rollouts = "rollouts"
    pairs = "pairs"
    train = "train"
    eval = "eval"
    publish = "publish"
    deploy = "deploy"
    done = "done"


class Progress(BaseModel):
    """Where a run is now. Counts refer to the current phase."""

    iteration: int = Field(0, description="1-based iteration of this run (0 before the first)")
    iterations: int = 0
    phase: Phase = Phase.queued
    done: int = Field(0, description="units finished in this phase (prompts, problems, steps)")
    total: int = 0
    step: int | None = Field(None, description="training: optimizer steps done")
    total_steps: int | None = None
    loss: float | None = None
    margin: float | None = None
    accuracy_current: float | None = Field(None, description="eval gate: held-out greedy accuracy of the current version")
    accuracy_candidate: float | None = None
    engine: str | None = Field(None, description="rollouts and eval: the engine generating (vllm or transformers, "
                               "with the adapter or the reason for an in-process fallback)")
    message: str = ""


ProgressFn = Callable[[Progress], Awaitable[None]]


async def ignore_progress(_: Progress) -> None:
    return None
