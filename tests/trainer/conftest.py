"""Fixtures of the trainer tests: the real SmolLM2 tokenizer (cached locally, never downloaded),
tiny random models built from a config, and a helper that writes trajectories by hand."""

from __future__ import annotations

import pytest
from support.paths import model_state_dir

from agent.trajectory import EpisodeEnd, Mode, SandboxCall, Segment, SegmentKind, Source, Trajectory
from sandbox.result import ExecResult, ExecStatus


@pytest.fixture(scope="session")
def tokenizer():
    from agent.modelstore import load_tokenizer, resolve

    state = model_state_dir()
    return load_tokenizer(resolve("smollm2", state).path)


def _make_traj(
    problem: str,
    parts: list[tuple[str, list[int]]],
    *,
    correct: bool | None = None,
    answer: str | None = None,
    problem_id: str | None = None,
    source: Source = Source.rollout,
    calls: list[ExecStatus] | None = None,
    finish: EpisodeEnd = EpisodeEnd.answer,
    **kw,
) -> Trajectory:
    """A trajectory from (kind, token ids) parts: kind is 'p', 'm' or 'o'."""
    kinds = {"p": SegmentKind.prompt, "m": SegmentKind.model, "o": SegmentKind.observation}
    return Trajectory(
        problem=problem,
        problem_id=problem_id,
        mode=kw.pop("mode", Mode.tir),
        segments=[Segment(kind=kinds[k], text=f"{k}{ids}", token_ids=ids) for k, ids in parts],
        correct=correct,
        answer=answer,
        source=source,
        finish_reason=finish,
        calls=[
            SandboxCall(turn=i, code="print(1)", result=ExecResult(status=s)) for i, s in enumerate(calls or [])
        ],
        **kw,
    )


@pytest.fixture(scope="session")
def make_traj():
    """The trajectory builder above, as a fixture (test modules never import conftest)."""
    return _make_traj


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer):
    """A tiny random model with the real tokenizer, saved as a checkpoint directory (one per test module)."""
    from agent.modelstore import tiny_random_model

    path = tmp_path_factory.mktemp("tiny")
    tiny_random_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
