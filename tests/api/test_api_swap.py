"""The hot swap on the in-process engine: deploy, rollback, refusals, one swap at a time, no leak.

Real parts: the gateway over HTTP, the registry on disk, two tiny random models (different
seeds) published as registry versions with golden prompts recorded from their own greedy output.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.gateway_stack import RunningApp, Stack

GOLDEN = ["apple: what is 2 + 2?", "river stone: what is 10 + 5?"]


def publish_tiny(registry: Any, tokenizer: Any, version: str, seed: int, tmp: Path, wrong_golden: bool = False) -> Any:
    """A tiny random model as ``version``; ``wrong_golden``: its golden prompts expect another text."""
    from agent.modelstore import tiny_random_model
    from mathagent.bench.swap_models import publish
    from trainer.registry import GoldenPrompt

    manifest = publish(registry, tiny_random_model(tokenizer, seed=seed), tokenizer, version, tmp, golden_problems=GOLDEN)
    if wrong_golden:
        golden = [GoldenPrompt(prompt=g.prompt, expected="The answer is 4.", max_new_tokens=g.max_new_tokens)
                  for g in manifest.golden]
        shutil.copytree(registry.path(version), tmp / f"copy-{version}", ignore=shutil.ignore_patterns("manifest.json"))
        shutil.rmtree(registry.path(version))
        manifest = registry.publish(tmp / f"copy-{version}", base_model="smollm2", golden=golden, version=version)
    return manifest


@pytest.fixture(scope="module")
def swap_app(stack: Stack, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> RunningApp:
    """A gateway serving registry version v0001; v0002 published beside it."""
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import load_model
    from trainer.registry import Registry

    tmp = tmp_path_factory.mktemp("swap")
    registry = Registry(tmp / "registry")
    publish_tiny(registry, tokenizer, "v0001", 11, tmp)
    publish_tiny(registry, tokenizer, "v0002", 12, tmp)
    registry.activate("v0001")
    engine = TransformersEngine(load_model(registry.path("v0001")), tokenizer, "v0001")
    app = stack.serve(engine, registry_dir=registry.root, max_new_tokens=16, max_total_tokens=1024, rate_limit_per_minute=0)
    app.state.extra["test_registry"] = registry
    app.state.extra["test_tmp"] = tmp
    return app


def admin(app: RunningApp) -> httpx.Client:
    return app.client(headers={"Authorization": f"Bearer {app.token}"})


def wait_settled(c: httpx.Client, timeout: float = 60) -> dict[str, Any]:
    """Until no swap is running or draining (the old version retired)."""
    deadline = time.monotonic() + timeout
    while True:
        body = c.get("/admin/versions").json()
        if body["swap"] is None and len(body["resident"]) == 1:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def solve_version(app: RunningApp) -> str:
    with app.client() as c:
        r = c.post("/v1/solve", json={"problem": "what is 1+1?", "mode": "cot"})
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_versions_deploy_rollback(swap_app: RunningApp) -> None:
    registry = swap_app.state.extra["test_registry"]
    with admin(swap_app) as c:
        body = wait_settled(c)
        assert body["active"] == "v0001" and body["resident"] == ["v0001"]
        by = {v["version"]: v for v in body["versions"]}
        assert by["v0002"]["golden_prompts"] == 2 and by["v0002"]["files"] > 0 and not by["v0002"]["resident"]
        assert by["v0001"]["active"] and by["v0001"]["in_registry"]

        r = c.post("/admin/deploy", json={"version": "v0002"})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["status"] == "committed" and rec["method"] == "load-beside"
        assert [p["name"] for p in rec["phases"]] == ["prepare", "commit"]
        assert [g["matched"] for g in rec["golden"]] == [True, True]
        assert solve_version(swap_app) == "v0002"
        body = wait_settled(c)
        assert body["active"] == "v0002" and body["previous"] == "v0001" and body["resident"] == ["v0002"]
        done = body["history"][0]
        assert done["status"] == "retired" and [p["name"] for p in done["phases"]] == ["prepare", "commit", "drain", "retire"]
        assert registry.pointer().active == "v0002" and registry.serving() == {"v0002"}

        # v0001 is retired: the rollback is a swap to it (prepare: checksums, load, golden)
        r = c.post("/admin/rollback")
        assert r.status_code == 200, r.text
        assert r.json()["method"] == "load-beside" and r.json()["to_version"] == "v0001"
        # at once again: v0002 is still resident (draining or just retired) -> a flip back, or a swap
        r2 = c.post("/admin/rollback")
        assert r2.status_code == 200, r2.text
        assert r2.json()["to_version"] == "v0002" and r2.json()["method"] in ("flip-back", "load-beside")
        assert solve_version(swap_app) == "v0002"
        wait_settled(c)
        c.post("/admin/deploy", json={"version": "v0001"}).raise_for_status()
        body = wait_settled(c)
        assert body["active"] == "v0001" and registry.pointer().active == "v0001"
        metrics = c.get("/metrics").text
        assert 'mathagent_swap_phase_seconds_count{phase="prepare"}' in metrics
        assert 'mathagent_active_model_version{version="v0001"} 1.0' in metrics


def test_corrupt_half_written_and_mismatched_versions_are_refused(swap_app: RunningApp, tokenizer: Any) -> None:
    registry = swap_app.state.extra["test_registry"]
    tmp = swap_app.state.extra["test_tmp"]
    if not registry.path("v0003").exists():
        publish_tiny(registry, tokenizer, "v0003", 13, tmp)
        weights = registry.path("v0003") / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
        weights.write_bytes(bytes(data))
        half = registry.path("v0004")  # a copy that died half way: no manifest
        half.mkdir()
        (half / "config.json").write_text("{}")
        (registry.staging / "v0005.dead").mkdir()  # a publish that died before its rename
        publish_tiny(registry, tokenizer, "v0006", 14, tmp, wrong_golden=True)
    with admin(swap_app) as c:
        before = wait_settled(c)
        answers = {v: c.post("/admin/deploy", json={"version": v}) for v in ("v0003", "v0004", "v0005", "v0006")}
        after = c.get("/admin/versions").json()
    assert answers["v0003"].status_code == 409 and answers["v0003"].json()["error"]["code"] == "version_corrupt"
    assert "checksum mismatch in model.safetensors" in answers["v0003"].json()["error"]["message"]
    assert answers["v0004"].status_code == 409 and answers["v0004"].json()["error"]["code"] == "version_corrupt"
    assert answers["v0005"].status_code == 404 and answers["v0005"].json()["error"]["code"] == "unknown_version"
    assert answers["v0006"].status_code == 409 and answers["v0006"].json()["error"]["code"] == "golden_mismatch"
    assert after["active"] == before["active"] and after["resident"] == before["resident"]
    assert registry.pointer().active == before["active"]
    assert [h["status"] for h in after["history"][:3]] == ["failed", "failed", "failed"]
    assert solve_version(swap_app) == before["active"]


def test_one_swap_at_a_time(swap_app: RunningApp) -> None:
    async def race() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {swap_app.token}"}
        async with httpx.AsyncClient(base_url=swap_app.url, headers=headers, timeout=120) as c:
            target = "v0002" if (await c.get("/admin/versions")).json()["active"] == "v0001" else "v0001"
            return list(await asyncio.gather(c.post("/admin/deploy", json={"version": target}),
                                             c.post("/admin/deploy", json={"version": target}),
                                             c.post("/admin/rollback")))

    with admin(swap_app) as c:
        wait_settled(c)
    answers = asyncio.run(race())
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 409, 409], [r.text for r in answers]
    for r in answers:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "swap_in_progress" and "one swap at a time" in r.json()["error"]["message"]
            assert r.headers["x-should-retry"] == "false"
    with admin(swap_app) as c:
        wait_settled(c)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.slow
def test_alternating_swaps_do_not_leak(swap_app: RunningApp) -> None:
    """20 alternating swaps: every retired model is freed (a weak reference dies) and the RSS comes
    back to its level. Each swap loads a 12.6 MB model from disk; a leak of one model per swap would
    add ~250 MB. Tolerance 60 MB: the allocator keeps some freed pages and the first swaps warm
    caches (safetensors mmap, tokenizer, torch kernels), so the level is taken after 4 warm-up swaps."""
    engine = swap_app.state.engine
    refs: list[weakref.ref[Any]] = []
    level = 0
    with admin(swap_app) as c:
        wait_settled(c)
        for i in range(24):
            target = "v0002" if c.get("/admin/versions").json()["active"] == "v0001" else "v0001"
            old_model = engine.model()
            c.post("/admin/deploy", json={"version": target}).raise_for_status()
            refs.append(weakref.ref(old_model))
            del old_model
            wait_settled(c)
            if i == 3:
                gc.collect()
                level = rss_bytes()
        gc.collect()
        end = rss_bytes()
    alive = [r for r in refs if r() is not None]
    assert not alive, f"{len(alive)} retired models still referenced"
    assert end - level < 60 * 2**20, f"RSS grew by {(end - level) / 2**20:.1f} MB over 20 swaps"


def test_the_base_model_has_one_identity_and_a_rollback_to_it_points_the_registry_at_it(
        stack: Stack, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A gateway started on MATHAGENT_MODEL; the trainer imports that model (its first retrain
    does) and publishes v0002; deploy v0002, roll back: the base model is one version throughout,
    and the registry's pointer names what is served."""
    from agent.modelstore import resolve, tiny_random_model
    from trainer.iterate import ensure_base
    from trainer.registry import Registry
    from trainer.settings import TrainerSettings

    tmp = tmp_path_factory.mktemp("base-identity")
    model = tmp / "base-model"
    tiny_random_model(tokenizer, seed=21).save_pretrained(model)
    tokenizer.save_pretrained(model)
    base = resolve(str(model), tmp).version
    registry = Registry(tmp / "registry")
    app = stack.serve(None, model=str(model), registry_dir=registry.root, max_new_tokens=16, max_total_tokens=1024,
                      rate_limit_per_minute=0)
    trainer = TrainerSettings(model=str(model), state_dir=tmp, registry_dir=registry.root)
    assert ensure_base(registry, trainer) == base  # the import is named as the gateway serves it
    assert ensure_base(registry, trainer) == base and len(registry.manifests()) == 1  # once
    publish_tiny(registry, tokenizer, "v0002", 22, tmp)

    def listed(body: dict[str, Any]) -> list[str]:
        names = [v["version"] for v in body["versions"]]
        assert len(names) == len(set(names)), names
        return names

    with admin(app) as c:
        body = wait_settled(c)
        assert body["active"] == base and listed(body) == [base, "v0002"]
        entry = body["versions"][0]
        assert entry["configured_base"] and entry["in_registry"] and entry["active"] and entry["resident"]

        c.post("/admin/deploy", json={"version": "v0002"}).raise_for_status()
        body = wait_settled(c)
        assert listed(body) == [base, "v0002"] and body["registry_active"] == "v0002"

        r = c.post("/admin/rollback")
        assert r.status_code == 200 and r.json()["to_version"] == base, r.text
        body = wait_settled(c)
        assert listed(body) == [base, "v0002"]
        assert body["active"] == body["registry_active"] == base and body["previous"] == "v0002"
        assert registry.pointer().active == base and registry.pointer().previous == "v0002"
        assert solve_version(app) == base


async def test_a_base_import_from_before_content_id_names_is_the_same_version(tokenizer: Any, tmp_path: Path) -> None:
    """A registry whose import of the base model is ``v0001`` (made before imports were named by
    the content id): still one entry, and a rollback to the base points the registry at v0001."""
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import resolve, tiny_random_model
    from api.metrics import Metrics
    from api.swap import SwapManager
    from api.swap_backends import TransformersBackend, VersionSource
    from trainer.registry import Registry

    model = tmp_path / "base-model"
    tiny_random_model(tokenizer, seed=31).save_pretrained(model)
    tokenizer.save_pretrained(model)
    base = resolve(str(model), tmp_path).version
    registry = Registry(tmp_path / "registry")
    registry.publish(model, base_model=str(model), version="v0001",
                     training_config={"imported_from": str(model), "content_id": base, "lineage_iteration": 0})
    await asyncio.to_thread(publish_tiny, registry, tokenizer, "v0002", 32, tmp_path)  # it runs its own loop
    engine = TransformersEngine.from_path(model, base)
    manager = SwapManager(engine, TransformersBackend(engine, tmp_path), registry, metrics=Metrics(),
                          base=VersionSource(version=base, path=model, kind="full", in_registry=False))
    try:
        listed = manager.versions().versions
        assert [(v.version, v.registry_version, v.configured_base) for v in listed] == [
            (base, "v0001", True), ("v0002", None, False)]
        await manager.deploy("v0002")
        rolled = await manager.rollback()
        assert rolled.to_version == base and registry.pointer().active == "v0001"
        view = manager.versions()
        assert view.active == base and view.registry_active == "v0001" and len(view.versions) == 2
        assert [v.active for v in view.versions] == [True, False]
    finally:
        await manager.aclose()
        await engine.aclose()
