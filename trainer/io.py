"""Reading trajectories (JSONL file or the Redis stream) and reading/writing pairs JSONL.

Bad lines are reported with their line number (a clear error, nothing silently lost).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from agent.trajectory import Trajectory
from trainer.pairs import Pair


class DataError(ValueError):
    """A data file that cannot be read; the message names the file and the line."""


def _jsonl(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def read_trajectories(path: Path) -> list[Trajectory]:
    out = []
    for n, line in _jsonl(path):
        try:
            out.append(Trajectory.model_validate_json(line))
        except ValidationError as exc:
            raise DataError(f"{path}:{n}: not a trajectory ({exc.error_count()} errors, first: {exc.errors()[0]['msg']})") from exc
    return out


def read_pairs(path: Path) -> list[Pair]:
    out = []
    for n, line in _jsonl(path):
        try:
            out.append(Pair.model_validate_json(line))
        except ValidationError as exc:
            raise DataError(f"{path}:{n}: not a pair ({exc.error_count()} errors, first: {exc.errors()[0]['msg']})") from exc
    return out


def write_pairs(pairs: list[Pair], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(p.model_dump_json() + "\n")
    tmp.replace(path)


def read_stream(redis_url: str, prefix: str, spool_dir: Path, *, page: int = 500) -> list[Trajectory]:
    """Every trajectory in the agent's Redis log (``agent.trajlog``), in stream order, with the
    latest trusted thumbs-up/down of its feedback stream (:mod:`api.feedback`: from the solving
    caller or an admin) joined onto ``Trajectory.feedback``."""
    import asyncio

    return asyncio.run(_read_stream(redis_url, prefix, spool_dir, page))


async def _read_stream(redis_url: str, prefix: str, spool_dir: Path, page: int) -> list[Trajectory]:
    from agent.trajectory import Feedback
    from agent.trajlog import Feedback as FeedbackRecord
    from agent.trajlog import TrajectoryLog

    log = TrajectoryLog(redis_url, spool_dir, prefix=prefix)
    out: list[Trajectory] = []
    try:
        start = "-"
        while True:
            entries = await log.read_range(start, "+", count=page)
            out += [e.trajectory for e in entries]
            if len(entries) < page:
                break
            start = "(" + entries[-1].entry_id
        ratings: dict[str, Feedback] = {}
        start = "-"
        while True:
            raw = await log.redis.xrange(log.feedback_stream, start, "+", count=page)
            for _, fields in raw:
                rec = FeedbackRecord.model_validate_json(fields["data"])
                if rec.rating is not None and rec.trusted:  # anyone else's rating is a vote, never a label
                    ratings[rec.trajectory_id] = Feedback(rec.rating)
            if len(raw) < page:
                break
            start = "(" + raw[-1][0]
    finally:
        await log.aclose()
    for traj in out:
        if traj.id in ratings:
            traj.feedback = ratings[traj.id]
    return out
