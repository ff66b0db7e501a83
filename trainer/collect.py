"""The prompts of one iteration: the configured training set (gold answers) plus logged user
trajectories with a label, or without one (majority vote, ScPO); and the held-out problems of
the eval gate.

Labels of a logged trajectory, strongest first: a corrected answer given as *trusted* feedback,
the gold answer the caller sent with the solve, a trusted thumbs-up (its own answer is right).
Anything else is an unlabelled prompt. Trusted feedback comes from the caller who solved the
problem (it holds the solve's feedback token) or from an admin: the gateway decides and records
it (:mod:`api.feedback`). Feedback from anyone else is a *vote*: each such caller's latest
corrected answer is counted in ``IterPrompt.votes`` for the record, and never becomes gold, so
nobody who merely learns a trajectory id can choose a training label. Within one caller's
records the latest counts. Only user traffic (``source="api"``) counts: the trainer's own
rollouts and evaluations never come back as prompts, and neither do chat turns that depend on
their context (``Trajectory.standalone``: a follow-up is no problem by itself). Duplicated
problem texts are kept once.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from agent.datasets import Problem, load_problems, synthetic_problems
from agent.trajectory import Mode, Source, Trajectory
from trainer.recipe import Recipe

log = logging.getLogger(__name__)


class IterPrompt(BaseModel):
    """One prompt of an iteration."""

    id: str
    problem: str
    gold: str | None = None
    mode: Mode = Mode.tir
    origin: Literal["dataset", "log"] = "dataset"
    solution: str | None = None
    gold_code: str | None = None
    dataset: str = ""
    votes: dict[str, int] = Field(default_factory=dict, description="corrected answers from untrusted feedback: "
                                  "answer -> distinct callers (a record, never a label)")


class Split(BaseModel):
    train: list[Problem]
    heldout: list[Problem]


def dataset_split(recipe: Recipe, *, shuffle: bool = False) -> Split:
    """Training problems and disjoint held-out problems of the recipe's data set.

    synthetic: two generator seeds (texts of the training set removed from the held-out one);
    gsm8k / math: the first ``train_limit`` rows of the train split for training and its last
    ``eval_limit`` rows held out (IRPO selects on held-out training problems, never the test set).
    ``shuffle``: gsm8k / math rows are first shuffled with the recipe's seed, so another seed
    draws other problems (seed 0 keeps the file order: the split of runs made before this).
    """
    if recipe.dataset == "synthetic":
        train = synthetic_problems(recipe.train_limit, seed=recipe.seed)
        texts = {p.problem for p in train}
        pool = synthetic_problems(recipe.eval_limit * 2 + 8, seed=recipe.seed + 7919)
        heldout = [p for p in pool if p.problem not in texts][: recipe.eval_limit]
        return Split(train=train, heldout=heldout)
    rows = load_problems(recipe.dataset, "train", data_dir=recipe.data_dir)
    if recipe.train_limit + recipe.eval_limit > len(rows):
        raise ValueError(
            f"{recipe.dataset} train split has {len(rows)} problems: train_limit {recipe.train_limit} + "
            f"eval_limit {recipe.eval_limit} do not fit"
        )
    if shuffle and recipe.seed != 0:
        import random

        rows = list(rows)
        random.Random(f"split-{recipe.seed}").shuffle(rows)
    return Split(train=rows[: recipe.train_limit], heldout=rows[len(rows) - recipe.eval_limit :])


def from_problem(p: Problem) -> IterPrompt:
    return IterPrompt(id=p.id, problem=p.problem, gold=p.gold, mode=p.mode, origin="dataset",
                      solution=p.solution, gold_code=p.gold_code, dataset=p.dataset)


async def logged_prompts(redis_url: str, spool_dir: Path, prefix: str, *, limit: int,
                         exclude: set[str]) -> list[IterPrompt]:
    """Prompts from the trajectory log (newest first, labelled before unlabelled), ``limit`` at most."""
    from agent.trajlog import Feedback, TrajectoryLog

    if limit <= 0:
        return []
    tlog = TrajectoryLog(redis_url, spool_dir, prefix=prefix)
    try:
        latest: dict[tuple[str, str], Feedback] = {}  # (trajectory, caller) -> that caller's latest record
        start = "-"
        while True:
            raw = await tlog.redis.xrange(tlog.feedback_stream, start, "+", count=500)
            for _, fields in raw:
                rec = Feedback.model_validate_json(fields["data"])
                latest[(rec.trajectory_id, rec.caller_key)] = rec
            if len(raw) < 500:
                break
            start = "(" + raw[-1][0]
        corrected: dict[str, str] = {}
        rated: dict[str, str] = {}
        votes: dict[str, dict[str, int]] = {}
        for rec in sorted(latest.values(), key=lambda r: r.created_at):  # the latest trusted record wins
            answer = (rec.corrected_answer or "").strip()
            if not rec.trusted:
                if answer:
                    tally = votes.setdefault(rec.trajectory_id, {})
                    tally[answer] = tally.get(answer, 0) + 1
                continue
            if answer:
                corrected[rec.trajectory_id] = answer
            if rec.rating is not None:
                rated[rec.trajectory_id] = rec.rating
        labelled: dict[str, IterPrompt] = {}
        unlabelled: dict[str, IterPrompt] = {}
        end = "+"
        while len(labelled) < limit:
            entries = await tlog.redis.xrevrange(tlog.stream, end, "-", count=500)  # newest first
            for _, fields in entries:
                traj = Trajectory.model_validate_json(fields["data"])
                text = traj.problem.strip()
                if traj.source is not Source.api or not traj.standalone or not text or text in exclude:
                    continue
                gold = corrected.get(traj.id) or traj.gold
                if gold is None and rated.get(traj.id) == "up" and traj.answer:
                    gold = traj.answer
                pid = "log-" + hashlib.sha1(text.encode()).hexdigest()[:12]
                prompt = IterPrompt(id=pid, problem=text, gold=gold, mode=traj.mode, origin="log", dataset="log",
                                    votes=votes.get(traj.id, {}))
                if gold is not None:
                    labelled.setdefault(text, prompt)
                    unlabelled.pop(text, None)
                elif text not in labelled:
                    unlabelled.setdefault(text, prompt)
            if len(entries) < 500:
                break
            end = "(" + entries[-1][0]
    finally:
        await tlog.aclose()
    return [*labelled.values(), *unlabelled.values()][:limit]
