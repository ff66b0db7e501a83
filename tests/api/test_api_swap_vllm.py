"""The hot swap on the vLLM engine: full weights reloaded in place, LoRA adapters blue/green.

Real vLLM cannot run on this project's machines (no GPU); the server here is the project's vLLM
stand-in (:mod:`support.fake_vllm`), which really generates with tiny random models and
follows vLLM 0.33.0's wire behaviour (pause/resume, collective_rpc reload_weights,
update_weight_version, runtime LoRA load/unload, weight versions reported per completion).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.gateway_stack import RunningApp, Stack
from test_api_swap import admin, publish_tiny, solve_version, wait_settled


@pytest.fixture(scope="module")
def fake(tokenizer: Any) -> Iterator[tuple[str, Any]]:
    from support.fake_vllm import create_app, serve_in_thread

    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import tiny_random_model

    engine = TransformersEngine(tiny_random_model(tokenizer, seed=5), tokenizer, "fake-base")
    app = create_app(engine, served_model_name="served-policy")
    with serve_in_thread(app) as url:
        yield url, app.state.fake


def publish_lora(registry: Any, tokenizer: Any, version: str, tmp: Path) -> Any:
    from peft import LoraConfig, get_peft_model

    from agent.modelstore import tiny_random_model

    base = tiny_random_model(tokenizer, seed=5)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                init_lora_weights=False))
    out = tmp / f"adapter-{version}"
    peft_model.save_pretrained(out)
    return registry.publish(out, base_model="smollm2", kind="lora", version=version)


@pytest.fixture(scope="module")
def vllm_swap_app(stack: Stack, tokenizer: Any, fake: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory) -> RunningApp:
    from agent.engines.openai_http import OpenAIHTTPEngine
    from trainer.registry import Registry

    url, _ = fake
    tmp = tmp_path_factory.mktemp("vllm-swap")
    registry = Registry(tmp / "registry")
    publish_tiny(registry, tokenizer, "v0001", 21, tmp)
    publish_lora(registry, tokenizer, "v0002", tmp)
    publish_tiny(registry, tokenizer, "v0003", 22, tmp, wrong_golden=True)
    engine = OpenAIHTTPEngine(url, tokenizer, model="served-policy", version="base-x")
    app = stack.serve(engine, registry_dir=registry.root, max_new_tokens=16, max_total_tokens=1024,
                      rate_limit_per_minute=0)
    app.state.extra["test_registry"] = registry
    return app


def test_full_weights_in_place_then_lora_blue_green_then_rollback(vllm_swap_app: RunningApp, fake: tuple[str, Any]) -> None:
    _, server = fake
    registry = vllm_swap_app.state.extra["test_registry"]
    assert server.weight_version == "base-x"  # the gateway named the server's "default" weights at start
    with admin(vllm_swap_app) as c:
        r = c.post("/admin/deploy", json={"version": "v0001"})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["method"] == "in-place-reload" and rec["status"] == "retired"
        assert [p["name"] for p in rec["phases"]] == ["prepare", "drain", "load", "verify", "commit", "retire"]
        assert {g["served_by"] for g in rec["golden"]} == {"v0001"}  # the server's weight label
        assert server.reloads == 1 and server.weight_version == "v0001"
        assert solve_version(vllm_swap_app) == "v0001"

        r = c.post("/admin/deploy", json={"version": "v0002"})
        assert r.status_code == 200, r.text
        assert r.json()["method"] == "lora-blue-green"
        names = list(server.loras)
        assert len(names) == 1 and names[0].startswith("v0002-")  # a new adapter name per load
        assert solve_version(vllm_swap_app) == "v0002"
        body = wait_settled(c)
        assert body["resident"] == ["v0002"] and registry.pointer().active == "v0002"

        r = c.post("/admin/rollback")  # v0001 still holds the base slot: mapped again, checked, flipped
        assert r.status_code == 200, r.text
        assert r.json()["method"] == "base-slot" and r.json()["to_version"] == "v0001"
        assert server.reloads == 1
        wait_settled(c)
        assert not server.loras  # the adapter was unloaded once no solve used it
        assert solve_version(vllm_swap_app) == "v0001"

        r = c.post("/admin/deploy", json={"version": "v0002"})  # loaded again under a new name
        assert r.status_code == 200 and next(iter(server.loras)) not in names
        wait_settled(c)
        c.post("/admin/rollback").raise_for_status()
        wait_settled(c)

        r = c.post("/admin/deploy", json={"version": "v0003"})  # golden prompts fail after the reload
        assert r.status_code == 409 and r.json()["error"]["code"] == "golden_mismatch", r.text
        assert server.weight_version == "v0001" and server.reloads == 3  # reloaded, then the old weights back
        body = c.get("/admin/versions").json()
        assert body["active"] == "v0001" and registry.pointer().active == "v0001"
        assert solve_version(vllm_swap_app) == "v0001"
