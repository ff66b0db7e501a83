"""The run directory of a retrain run and its state file: which steps finished, with their outputs.

Layout::

    <run_dir>/state.json             RunState (written to a temp file, fsync'd, renamed)
    <run_dir>/iter-01/prompts.jsonl  the iteration's prompts (training set + logged)
    <run_dir>/iter-01/heldout.jsonl  the eval gate's held-out problems
    <run_dir>/iter-01/rollouts.jsonl one line per finished prompt (all its samples)
    <run_dir>/iter-01/pairs.jsonl
    <run_dir>/iter-01/train/         the training subprocess's output and resumable state
    <run_dir>/iter-01/eval.json

A step is recorded as done only after its outputs are durable, so a restart re-runs at most the
step that was interrupted, and each step is written to be safe to re-run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from trainer.recipe import Recipe

STATE_FILE = "state.json"


class RunStateError(ValueError):
    """A run directory that cannot be used for this run (the message says why)."""


class StepRecord(BaseModel):
    done_at: float = Field(default_factory=time.time)
    outputs: dict[str, Any] = Field(default_factory=dict)


class IterationState(BaseModel):
    index: int = Field(description="1-based iteration of this run")
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    planned_version: str | None = Field(None, description="the version name chosen before publishing")


class RunState(BaseModel):
    run_id: str
    recipe: Recipe
    created_at: float = Field(default_factory=time.time)
    iterations: list[IterationState] = Field(default_factory=list)
    outcome: dict[str, Any] | None = Field(None, description="set when the run finished")


def write_json_durable(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunDir:
    """A run directory: load its state (or start one), record finished steps durably."""

    def __init__(self, path: Path, run_id: str, recipe: Recipe) -> None:
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        state_path = self.path / STATE_FILE
        if state_path.is_file():
            try:
                self.state = RunState.model_validate_json(state_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise RunStateError(f"{state_path}: not a run state file ({type(exc).__name__})") from exc
            if self.state.recipe != recipe:
                mine = self.state.recipe.model_dump(mode="json")
                theirs = recipe.model_dump(mode="json")
                diff = sorted(k for k in mine if mine[k] != theirs.get(k))
                raise RunStateError(
                    f"{self.path} holds a run with a different recipe (differs in: {', '.join(diff)}); "
                    "resume it with the same options or use another run directory"
                )
        else:
            self.state = RunState(run_id=run_id, recipe=recipe)
            self.save()

    def save(self) -> None:
        write_json_durable(self.path / STATE_FILE, self.state.model_dump_json(indent=2))

    def iteration(self, index: int) -> IterationState:
        while len(self.state.iterations) < index:
            self.state.iterations.append(IterationState(index=len(self.state.iterations) + 1))
        return self.state.iterations[index - 1]

    def iter_dir(self, index: int) -> Path:
        d = self.path / f"iter-{index:02d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def done(self, index: int, step: str) -> dict[str, Any] | None:
        rec = self.iteration(index).steps.get(step)
        return rec.outputs if rec is not None else None

    def mark(self, index: int, step: str, outputs: dict[str, Any]) -> dict[str, Any]:
        self.iteration(index).steps[step] = StepRecord(outputs=json.loads(json.dumps(outputs, default=str)))
        self.save()
        return outputs

    def plan_version(self, index: int, version: str) -> None:
        self.iteration(index).planned_version = version
        self.save()

    def finish(self, outcome: dict[str, Any]) -> None:
        self.state.outcome = outcome
        self.save()
