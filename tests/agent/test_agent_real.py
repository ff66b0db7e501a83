"""The real thing: SmolLM2 (TransformersEngine) + the real sandbox service + a private Redis, on a
few synthetic problems. Slow (loads the model, generates on CPU), but run in CI.

What must hold whatever the small model writes: exact token bookkeeping against the real
tokenizer, observations produced by the real sandbox for the code the model wrote, every
trajectory in Redis, the episode pinned to the engine's version."""

from __future__ import annotations

import pytest

from agent.datasets import synthetic_problems
from agent.loop import Sandbox
from agent.solver import Solver, SolverSettings
from agent.trajectory import SegmentKind
from agent.trajlog import TrajectoryLog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    from support.paths import model_state_dir as state_dir

    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import resolve

    resolved = resolve("smollm2", state_dir())
    return TransformersEngine.from_path(resolved.path, version=resolved.version, threads=1)


async def test_real_model_real_sandbox_episodes(engine, tmp_path, private_redis):
    from support.sandbox_service import running_sandbox

    problems = synthetic_problems(3, seed=5, level="easy")
    log = TrajectoryLog(private_redis.url, tmp_path / "spool", prefix="real")
    async with running_sandbox(tmp_path / "sb") as sandbox:
        sb: Sandbox = sandbox
        solver = Solver(engine, sb, log, SolverSettings(max_turns=2, max_new_tokens=160, max_total_tokens=1024))
        results = [await solver.solve(p.problem, gold=p.gold, source="eval") for p in problems]
        # the gold programs run in the same sandbox and print the gold answers
        for p in problems:
            assert p.gold_code is not None
            r = await sandbox.execute(p.gold_code)
            assert r.ok and r.stdout.strip() == p.gold

    trajs = [r.trajectories[0] for r in results]
    for t in trajs:
        assert t.model_version == engine.model_version
        kinds = [s.kind for s in t.segments]
        assert kinds[0] is SegmentKind.prompt and kinds[1] is SegmentKind.model
        # observation segments alternate with model segments, one per sandbox call
        assert kinds.count(SegmentKind.observation) == t.n_tool_calls
        for seg in t.segments:  # ids and text agree with the real tokenizer (no drift)
            assert engine.decode(seg.token_ids) == seg.text
        assert len(t.token_ids()) <= 1024
        assert t.correct is not None and t.finish_reason is not None
        for call, obs in zip(t.calls, [s for s in t.segments if s.kind is SegmentKind.observation], strict=True):
            assert call.result.status.value != "sandbox_error"
            if call.result.ok and call.result.stdout.strip():
                assert call.result.stdout.strip()[:50] in obs.text

    # the small model writes a python block most of the time (models.md: ~70%)
    assert sum(t.n_tool_calls > 0 for t in trajs) >= 1
    logged = await log.read_range()
    assert sorted(x.trajectory.id for x in logged) == sorted(t.id for t in trajs)
    await log.aclose()
