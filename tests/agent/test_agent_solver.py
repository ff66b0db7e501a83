"""The solver: samples + majority vote, revisions with parent links, version pinning, logging to a
real (private) Redis, streaming and early close, input validation."""

from __future__ import annotations

import pytest
from agent_scripted import ScriptedEngine, ScriptedSandbox

from agent.events import EpisodeStart, SolveDone, TextDelta
from agent.solver import SolveError, Solver
from agent.trajectory import Mode, Source
from agent.trajlog import TrajectoryLog
from sandbox.result import ExecResult, ExecStatus


async def test_majority_vote_over_samples_and_logging(tokenizer, private_redis, tmp_path):
    engine = ScriptedEngine(tokenizer, ["Final answer: 5", "Final answer: 7", "Final answer: 5.0"])
    log = TrajectoryLog(private_redis.url, tmp_path / "spool", prefix="s1")
    solver = Solver(engine, None, log)
    result = await solver.solve("2+3?", gold="5", mode="cot", samples=3, seed=10, source="eval")

    assert result.answer in {"5", "5.0"} and result.correct is True
    assert result.vote is not None and result.vote.top_share == pytest.approx(2 / 3)
    assert result.vote_shares is not None and sorted(result.vote_shares.values()) == pytest.approx([1 / 3, 2 / 3])
    assert len(result.trajectories) == 3 and len(set(result.trajectory_ids)) == 3
    assert all(r.temperature == 0.8 for r in engine.requests)  # sampling when samples > 1
    assert sorted(r.seed for r in engine.requests) == [10, 11, 12]
    assert {t.source for t in result.trajectories} == {Source.eval}
    logged = await log.read_range()
    assert sorted(x.trajectory.id for x in logged) == sorted(result.trajectory_ids)
    assert "vote_shares" in result.model_dump()
    await log.aclose()


async def test_revisions_keep_every_attempt_with_parent_links(tokenizer):
    engine = ScriptedEngine(tokenizer, ["Final answer: 4", "Final answer: 5", "Final answer: 5"])
    solver = Solver(engine, None)
    result = await solver.solve("2+3?", gold="5", mode=Mode.cot, revisions=2)
    a, b, c = result.trajectories
    assert (a.parent_id, b.parent_id, c.parent_id) == (None, a.id, b.id)
    assert result.final_ids == [c.id]
    assert result.answer == "5" and result.correct is True
    assert [t.correct for t in result.trajectories] == [False, True, True]
    revision_prompt = b.segments[0].text
    assert "previous attempt" in revision_prompt and "Final answer: 4" in revision_prompt
    assert all(r.temperature == 0.0 for r in engine.requests)


async def test_episode_is_pinned_to_the_version_at_admission(tokenizer):
    engine = ScriptedEngine(tokenizer, ["```python\nprint(1)\n```\n", "\\boxed{1}"], version="v1", delay_s=0.05)
    sandbox = ScriptedSandbox([ExecResult(status=ExecStatus.ok, stdout="1\n")])
    solver = Solver(engine, sandbox)
    stream = solver.stream("x")
    first = await anext(stream)
    assert isinstance(first, EpisodeStart) and first.model_version == "v1"
    engine.version = "v2"  # a hot swap while the episode runs
    events = [e async for e in stream]
    result = events[-1].result
    assert result.model_version == "v1"
    assert [r.version for r in engine.requests] == ["v1", "v1"]
    assert result.trajectories[0].model_version == "v1"


async def test_stream_then_close_early_cancels_and_closes_sessions(tokenizer):
    turn1 = "```python\nprint(1)\n```\n"
    engine = ScriptedEngine(tokenizer, [turn1, turn1, "long " * 300, "long " * 300], delay_s=0.01)
    sandbox = ScriptedSandbox([ExecResult(status=ExecStatus.ok, stdout="1\n")] * 2)
    solver = Solver(engine, sandbox)
    stream = solver.stream("x", samples=2)
    n = 0
    async for e in stream:
        if isinstance(e, TextDelta) and e.turn == 1:
            n += 1
            if n == 4:
                break
    await stream.aclose()
    assert engine.cancelled == 2
    assert len(sandbox.closed) == 2


async def test_stream_ends_with_result(tokenizer):
    engine = ScriptedEngine(tokenizer, ["\\boxed{2}"])
    events = [e async for e in Solver(engine, ScriptedSandbox([])).stream("1+1", gold="2")]
    assert isinstance(events[-1], SolveDone) and events[-1].result.correct is True
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).startswith("\\boxed{2}")


@pytest.mark.parametrize(
    "kwargs",
    [{"problem": " "}, {"problem": "x", "samples": 0}, {"problem": "x", "mode": "poetry"},
     {"problem": "x", "revisions": 99}, {"problem": "x", "max_turns": -1}],
)
async def test_bad_input_is_a_clear_error(tokenizer, kwargs):
    solver = Solver(ScriptedEngine(tokenizer, []), ScriptedSandbox([]))
    with pytest.raises(SolveError):
        await solver.solve(**kwargs)


async def test_tir_without_sandbox_is_refused(tokenizer):
    with pytest.raises(SolveError, match="sandbox"):
        await Solver(ScriptedEngine(tokenizer, []), None).solve("x")
