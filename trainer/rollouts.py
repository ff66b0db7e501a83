"""Rollouts of an iteration: N samples per prompt from the current version, through the agent
loop and the sandbox, written to a JSONL file as each prompt finishes.

Prompts run concurrently through one :class:`agent.solver.Solver` (its engine batches every
episode in flight). One line per finished prompt holds all its samples (and the gold solution
rendered as a trajectory, for IRPO's winners), so a restart skips the prompts already written
and never counts a half-sampled prompt. A line torn by a crash (the last one) is cut off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.loop import Sandbox
from agent.solver import Solver
from agent.trajectory import Mode, Source, Trajectory
from trainer.collect import IterPrompt

log = logging.getLogger(__name__)


class RolloutRecord(BaseModel):
    prompt_id: str
    trajectories: list[Trajectory]
    gold: Trajectory | None = None


class RolloutFileError(ValueError):
    """A rollouts file damaged somewhere other than its last line."""


def read_rollouts(path: Path) -> dict[str, RolloutRecord]:
    """Finished prompts of ``path``. Every record is written as one line ending in a newline, so
    bytes after the last newline are a line torn by a crash: they are truncated away."""
    out: dict[str, RolloutRecord] = {}
    if not path.is_file():
        return out
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with open(path, "r+b") as f:
            f.truncate(whole)
    for n, raw in enumerate(data[:whole].split(b"\n"), 1):
        if raw.strip():
            try:
                rec = RolloutRecord.model_validate_json(raw)
            except ValidationError as exc:
                raise RolloutFileError(f"{path}:{n}: not a rollout record ({exc.error_count()} errors)") from exc
            out[rec.prompt_id] = rec
    return out


def prompt_seed(seed: int, iteration: int, prompt_id: str) -> int:
    return (seed * 1_000_003 + iteration * 7919 + zlib.crc32(prompt_id.encode())) % (2**31)


async def gold_trajectory_for(
    prompt: IterPrompt, first: Trajectory, tokenizer: Any, sandbox: Sandbox | None
) -> Trajectory | None:
    """The prompt's gold solution rendered after the rollouts' own prompt ids (IRPO adds it to
    the winners): a GSM8K answer field, a MATH solution, or a synthetic problem's gold Python
    whose printed output comes from the real sandbox. In tool mode a GSM8K rationale becomes a
    Python cell of its calculator annotations (:mod:`trainer.gsm8k_cells`), run in the sandbox
    and kept only when its output matches the annotations; otherwise it stays text."""
    from trainer.gold import gold_trajectory, gsm8k_solution

    if prompt.gold is None or not first.segments:
        return None
    common: dict[str, Any] = dict(prompt_ids=first.segments[0].token_ids, prompt_text=first.segments[0].text,
                                  problem=prompt.problem, problem_id=prompt.id, gold=prompt.gold, mode=prompt.mode)
    if prompt.gold_code and prompt.mode is Mode.tir and sandbox is not None:
        result = await sandbox.execute(prompt.gold_code, timeout_s=10.0)
        if not result.ok or not result.stdout.strip():
            return None
        return gold_trajectory(tokenizer, solution="Let me compute this with Python.", code=prompt.gold_code,
                               code_output=result.stdout, **common)
    if prompt.solution and prompt.dataset == "gsm8k" and prompt.mode is Mode.tir and sandbox is not None:
        from trainer.gsm8k_cells import NotConvertible, check_output, tool_solution

        try:
            cell = tool_solution(prompt.solution)
        except NotConvertible as exc:
            log.debug("gsm8k %s: no tool solution (%s)", prompt.id, exc)
        else:
            result = await sandbox.execute(cell.code, timeout_s=10.0)
            why = check_output(cell, result.stdout) if result.ok else f"the cell failed: {result.status}"
            if why is None:
                return gold_trajectory(tokenizer, solution=cell.reasoning, code=cell.code, code_output=result.stdout,
                                       **common)
            log.warning("gsm8k %s: the rationale's cell does not verify (%s); training on its text", prompt.id, why)
    if prompt.solution and prompt.dataset == "gsm8k" and "####" in prompt.solution:
        text, _ = gsm8k_solution(prompt.solution, prompt.mode)
        return gold_trajectory(tokenizer, solution=text, **common)
    if prompt.solution and prompt.dataset == "math":
        return gold_trajectory(tokenizer, solution=prompt.solution, **common)
    return None


async def run_rollouts(
    solver: Solver,
    prompts: list[IterPrompt],
    path: Path,
    *,
    samples: int,
    temperature: float,
    concurrency: int,
    seed: int,
    iteration: int,
    tokenizer: Any,
    on_done: Callable[[int, int], Awaitable[None]] | None = None,
) -> dict[str, RolloutRecord]:
    """Sample every prompt not yet in ``path``; returns all finished records (old and new)."""
    done = read_rollouts(path)
    todo = [p for p in prompts if p.id not in done]
    sem = asyncio.Semaphore(concurrency)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:

        async def one(p: IterPrompt) -> None:
            async with sem:
                result = await solver.solve(
                    p.problem, gold=p.gold, mode=p.mode, samples=samples, temperature=temperature,
                    source=Source.rollout, problem_id=p.id, seed=prompt_seed(seed, iteration, p.id),
                )
                gold = await gold_trajectory_for(p, result.trajectories[0], tokenizer, solver.sandbox)
            rec = RolloutRecord(prompt_id=p.id, trajectories=result.trajectories, gold=gold)
            out.write(rec.model_dump_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
            done[p.id] = rec
            if on_done is not None:
                await on_done(len(done), len(prompts))

        await asyncio.gather(*(one(p) for p in todo))
    return done
