"""``mathagent pairs``: preference pairs from logged trajectories (files or the Redis stream).

Errors a user can cause (missing file, bad line, bad option, unknown model) become one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.configuration import load
from agent.settings import AgentSettings
from agent.trajectory import Trajectory
from mathagent.errors import fail
from trainer.pairs import PairSet, Scheme, feedback_pairs, irpo_pairs, mdpo_pairs, problem_key, scpo_pairs


class UserError(Exception):
    """A problem with the user's input; the message is shown as is."""


def load_trajectories(settings: AgentSettings, files: list[Path], from_redis: bool,
                      stream_prefix: str | None) -> list[Trajectory]:
    from trainer.io import read_stream, read_trajectories

    if not files and not from_redis:
        raise UserError("give --from-file PATH (JSONL of trajectories) or --from-redis")
    out: list[Trajectory] = []
    for f in files:
        out += read_trajectories(f)
    if from_redis:
        prefix = stream_prefix or settings.redis_prefix
        try:
            out += read_stream(settings.redis_url, prefix, settings.spool_dir)
        except (OSError, ValidationError) as exc:
            raise UserError(f"cannot read the trajectory log {prefix}:trajectories at {settings.redis_url}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise UserError(f"cannot read the trajectory log {prefix}:trajectories at {settings.redis_url}: {exc}") from exc
            raise
    return out


def gold_from_dataset(path: Path, trajectories: list[Trajectory], tokenizer: Any) -> dict[str, Trajectory]:
    """Gold solutions of a GSM8K (question/answer) or MATH (problem/solution) JSONL, matched to
    the trajectories' problems by text, rendered after each problem's logged prompt ids."""
    from agent.trajectory import SegmentKind
    from trainer.gold import gold_trajectory, gsm8k_solution

    rows: dict[str, dict[str, str]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                text = row.get("question") or row.get("problem")
                if text:
                    rows[text.strip()] = row
    out: dict[str, Trajectory] = {}
    for traj in trajectories:
        key = problem_key(traj)
        row = rows.get(traj.problem.strip())
        if key in out or row is None or not traj.segments or traj.segments[0].kind is not SegmentKind.prompt:
            continue
        if "answer" in row and "####" in row["answer"]:
            solution, gold = gsm8k_solution(row["answer"], traj.mode)
        elif "solution" in row:
            solution, gold = row["solution"], traj.gold or ""
        else:
            continue
        out[key] = gold_trajectory(
            tokenizer,
            prompt_ids=traj.segments[0].token_ids,
            prompt_text=traj.segments[0].text,
            problem=traj.problem,
            problem_id=traj.problem_id,
            solution=solution,
            gold=gold,
            mode=traj.mode,
        )
    return out


def build_pairs(
    trajectories: list[Trajectory],
    scheme: str,
    *,
    k: int,
    tau: float,
    max_length: int | None,
    seed: int,
    gold: dict[str, Trajectory] | None = None,
) -> PairSet:
    try:
        s = Scheme(scheme)
    except ValueError:
        raise UserError(f"--scheme must be one of {', '.join(x.value for x in Scheme)}, not {scheme!r}") from None
    if s is Scheme.irpo:
        return irpo_pairs(trajectories, k=k, gold=gold, max_length=max_length)
    if s is Scheme.mdpo:
        return mdpo_pairs(trajectories, max_length=max_length, seed=seed)
    if s is Scheme.scpo:
        return scpo_pairs(trajectories, tau=tau, max_length=max_length)
    return feedback_pairs(trajectories, k=k, max_length=max_length)


def run_pairs(
    *,
    files: list[Path],
    from_redis: bool,
    stream_prefix: str | None,
    scheme: str,
    out: Path,
    k: int,
    tau: float,
    max_length: int | None,
    seed: int,
    gold_data: Path | None,
    model: str,
) -> int:
    from rich.console import Console
    from rich.table import Table

    from agent.modelstore import ModelSpecError, load_tokenizer, resolve
    from trainer.io import DataError, write_pairs

    settings = load(AgentSettings)
    try:
        trajectories = load_trajectories(settings, files, from_redis, stream_prefix)
        gold = None
        if gold_data is not None:
            tokenizer = load_tokenizer(resolve(model, settings.state_dir).path)
            gold = gold_from_dataset(gold_data, trajectories, tokenizer)
        result = build_pairs(trajectories, scheme, k=k, tau=tau, max_length=max_length, seed=seed, gold=gold)
    except (DataError, UserError, ModelSpecError) as exc:
        return fail(str(exc))
    write_pairs(result.pairs, out)
    table = Table(title=f"{scheme} pairs -> {out}")
    table.add_column("count")
    table.add_column("n", justify="right")
    for name, n in result.counts.items():
        table.add_row(name, str(n))
    Console(stderr=True).print(table)
    return 0
