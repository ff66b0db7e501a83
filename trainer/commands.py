"""What ``mathagent pairs`` and ``mathagent train`` do, behind the thin typer wrappers in ``agent/cli.py``.

Errors a user can cause (missing file, bad line, bad option, unknown model) become one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.trajectory import Trajectory
from trainer.pairs import PairSet, Scheme, feedback_pairs, irpo_pairs, mdpo_pairs, problem_key, scpo_pairs


class UserError(Exception):
    """A problem with the user's input; the message is shown as is."""


def load_trajectories(files: list[Path], from_redis: bool, stream_prefix: str | None) -> list[Trajectory]:
    from trainer.io import read_stream, read_trajectories

    if not files and not from_redis:
        raise UserError("give --from-file PATH (JSONL of trajectories) or --from-redis")
    out: list[Trajectory] = []
    for f in files:
        out += read_trajectories(f)
    if from_redis:
        from agent.settings import AgentSettings

        settings = AgentSettings()
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


def pairs_command(
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
) -> PairSet:
    from rich.console import Console
    from rich.table import Table

    from trainer.io import DataError, write_pairs

    try:
        trajectories = load_trajectories(files, from_redis, stream_prefix)
        gold = None
        if gold_data is not None:
            tokenizer = _tokenizer(model)
            gold = gold_from_dataset(gold_data, trajectories, tokenizer)
        result = build_pairs(trajectories, scheme, k=k, tau=tau, max_length=max_length, seed=seed, gold=gold)
    except (DataError, UserError) as exc:
        _fail(str(exc))
    write_pairs(result.pairs, out)
    table = Table(title=f"{scheme} pairs -> {out}")
    table.add_column("count")
    table.add_column("n", justify="right")
    for name, n in result.counts.items():
        table.add_row(name, str(n))
    Console(stderr=True).print(table)
    return result


def _tokenizer(model: str) -> Any:
    from agent.modelstore import ModelSpecError, load_tokenizer, resolve
    from trainer.config import _default_state_dir

    try:
        return load_tokenizer(resolve(model, _default_state_dir()).path)
    except ModelSpecError as exc:
        raise UserError(str(exc)) from exc


def train_command(options: dict[str, Any]) -> None:
    from agent.modelstore import ModelSpecError
    from trainer.config import TrainConfig
    from trainer.io import DataError
    from trainer.train import train

    try:
        config = TrainConfig(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        _fail("; ".join(f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()))
    if not config.pairs.is_file():
        _fail(f"--pairs {config.pairs}: no such file")
    try:
        result = train(config)
    except (DataError, ModelSpecError, ValueError) as exc:
        _fail(str(exc))
    print(
        f"trained {result.steps} steps on {result.items} items: loss {result.first_loss:.4f} -> "
        f"{result.last.get('loss', float('nan')):.4f}, margin {result.last.get('margin', float('nan')):.4f}, "
        f"{result.tokens_per_s:.0f} tokens/s; checkpoint in {result.out}"
    )


def _fail(message: str) -> Any:
    print(f"mathagent: {message}", file=sys.stderr)
    raise SystemExit(2)
