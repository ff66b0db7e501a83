"""The hot swap under load: 8 clients for 60 s, a deploy at 20 s and a rollback at 40 s.

Real parts: the gateway over HTTP, the sandbox service, a private Redis, the registry, two tiny
scripted model versions (:mod:`mathagent.bench.swap_models`: every episode writes code, runs it in the
sandbox and answers, so each one is several generation requests; version v0001 answers 7,
v0002 answers 3). The engine records every generation request it serves, so the test checks
each episode request by request: one version throughout, the one its trajectory names.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.gateway_stack import RunningApp, Stack, model_state_dir

from agent.engines.transformers_engine import TransformersEngine
from mathagent.bench.swap import RecordsServed

ANSWER = {"v0001": "7", "v0002": "3"}


class RecordingEngine(RecordsServed, TransformersEngine):
    """The in-process engine, recording what served each generation request."""


@pytest.fixture(scope="module")
def load_app(stack: Stack, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> RunningApp:
    from agent.modelstore import load_model
    from mathagent.bench.swap_models import cached_scripted_model, publish
    from trainer.registry import Registry

    tmp = tmp_path_factory.mktemp("swap-load")
    registry = Registry(tmp / "registry")
    cache = model_state_dir() / "test-models"
    cache.mkdir(parents=True, exist_ok=True)
    for version, seed in (("v0001", 1), ("v0002", 2)):
        model = cached_scripted_model(tokenizer, ANSWER[version], seed=seed, cache=cache)
        publish(registry, model, tokenizer, version, tmp, golden_problems=["apple: what is 2 + 2?"])
    registry.activate("v0001")
    assert registry.manifest("v0001").golden[0].expected != registry.manifest("v0002").golden[0].expected
    engine = RecordingEngine(load_model(registry.path("v0001")), tokenizer, "v0001")
    app = stack.serve(engine, registry_dir=registry.root, max_new_tokens=24, max_total_tokens=1024, max_turns=2,
                      rate_limit_per_minute=0)
    app.state.extra["test_registry"] = registry
    return app


@pytest.mark.slow
@pytest.mark.timeout(600)  # a first run also trains the two scripted models (cached after)
def test_deploy_and_rollback_under_load(load_app: RunningApp) -> None:
    from mathagent.bench.swap import drive

    report = asyncio.run(drive(load_app.url, load_app.token, clients=8, duration_s=60, deploy_at_s=20,
                               rollback_at_s=40, deploy_version="v0002"))
    failed = report.failed
    assert not failed, [f"{r.route} stream={r.stream} {r.status} {r.error}" for r in failed[:5]]
    assert len(report.requests) >= 80, len(report.requests)
    deploy, rollback = report.actions
    assert deploy.status == 200 and rollback.status == 200, (deploy.record, rollback.record)
    assert deploy.final is not None and deploy.final["status"] == "retired"
    assert rollback.final is not None and rollback.final["status"] == "retired"

    # which version answered: pinned at admission, the new one for every request admitted after the flip
    for r in report.requests:
        assert r.model_version in ANSWER and r.answer in (None, ANSWER[r.model_version]), r  # streamed chat: no answer field
        if r.started > deploy.answered and r.ended < rollback.sent:
            assert r.model_version == "v0002", r
        if r.started < deploy.sent or r.started > rollback.answered:
            assert r.model_version == "v0001", r
    versions = {r.model_version for r in report.requests}
    assert versions == {"v0001", "v0002"}

    # every episode: all its generation requests asked for and were served by the trajectory's version
    import httpx

    served = load_app.state.engine.served
    multi_turn = 0
    with httpx.Client(base_url=load_app.url, timeout=60) as c:
        for r in report.requests:
            for tid in r.trajectory_ids:
                resp = c.get(f"/v1/trajectories/{tid}")
                assert resp.status_code == 200, resp.text
                traj = resp.json()["trajectory"]
                assert traj["model_version"] == r.model_version and traj["answer"] == ANSWER[r.model_version], traj
                prompt = traj["segments"][0]["token_ids"]
                mine = [(asked, by) for ids, asked, by in served if ids[: len(prompt)] == prompt]
                model_segments = sum(1 for s in traj["segments"] if s["kind"] == "model")
                assert len(mine) >= model_segments >= 1
                assert {asked for asked, _ in mine} == {by for _, by in mine} == {traj["model_version"]}, (tid, mine)
                multi_turn += len(mine) >= 2 and len(traj["calls"]) >= 1
    assert multi_turn >= 0.9 * len(report.requests), multi_turn
