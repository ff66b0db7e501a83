"""Which engine a retrain step generates with (:mod:`trainer.engines`), on the session's real vLLM
server: the version its slot holds runs on vLLM, a LoRA adapter on those weights is loaded under
a private name and unloaded afterwards (also when the step fails), anything else falls back to
the in-process engine with the reason, adapters a killed run left are unloaded at the next
start, and a completion produced by other weights (a deploy meanwhile) fails the step."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.paths import model_state_dir

from agent.engines.base import GenerationRequest
from agent.runtime import Resources
from trainer.engines import PRIVATE_PREFIX, StepEngines, WeightsChangedError
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.slow


def _adapters(vllm) -> list[str]:
    return [m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"] if m["id"] != vllm.served_name]


@pytest.fixture
def engines(vllm, tmp_path):
    settings = TrainerSettings(state_dir=tmp_path / "state", dev=True, model=str(vllm.model_dir), engine="vllm",
                               vllm_url=vllm.url, vllm_model=vllm.served_name, torch_threads=1)
    return StepEngines(Resources(settings), "run/1")


@pytest.fixture(scope="module")
def adapter(vllm_shared) -> Path:
    from mathagent.bench.vllm_versions import lora_adapter

    running = vllm_shared.running()
    return lora_adapter(running.model_dir, model_state_dir() / "test-models" / "smollm2-lora-2", seed=2)


async def _one(engine) -> str:
    (c,) = await engine.generate(GenerationRequest(prompt_ids=engine.chat_prefix([{"role": "user", "content": "2+2?"}]),
                                                   max_new_tokens=6))
    return c.model_version


async def test_the_slot_version_and_its_adapters_run_on_vllm_others_fall_back(engines, vllm, adapter):
    base = vllm.version
    async with engines.open(base, vllm.model_dir) as (engine, choice):
        assert choice.engine == "vllm" and choice.adapter is None
        assert await _one(engine) == base

    async with engines.open("cand-1", vllm.model_dir, adapter=adapter, adapter_base=base) as (engine, choice):
        assert choice.engine == "vllm" and choice.adapter and choice.adapter.startswith(f"{PRIVATE_PREFIX}run-1-")
        assert _adapters(vllm) == [choice.adapter]  # loaded under the private name
        assert await _one(engine) == "cand-1"
    assert _adapters(vllm) == []  # and unloaded when the step ended

    with pytest.raises(RuntimeError, match="boom"):
        async with engines.open("cand-2", vllm.model_dir, adapter=adapter, adapter_base=base) as (engine, choice):
            assert _adapters(vllm) == [choice.adapter]
            raise RuntimeError("boom")
    assert _adapters(vllm) == []  # unloaded whatever the outcome

    # full weights vLLM's slot does not hold: in process, and the progress says why
    async with engines.open("v0009", vllm.model_dir) as (engine, choice):
        assert choice.engine == "transformers" and "full weights" in choice.why and base in choice.why
        assert choice.describe().startswith("transformers (")
        assert await _one(engine) == "v0009"
    # an adapter trained on weights the slot does not hold: in process too, nothing loaded
    async with engines.open("cand-3", vllm.model_dir, adapter=adapter, adapter_base="v0042") as (_, choice):
        assert choice.engine == "transformers" and "v0042" in choice.why
        assert _adapters(vllm) == []


async def test_leftover_adapters_are_unloaded_and_a_changed_slot_fails_the_step(engines, vllm, adapter):
    httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": f"{PRIVATE_PREFIX}dead-run-1",
                                                         "lora_path": str(adapter)}, timeout=60).raise_for_status()
    httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "v0002-users", "lora_path": str(adapter)},
               timeout=60).raise_for_status()
    assert await engines.unload_leftovers() == [f"{PRIVATE_PREFIX}dead-run-1"]
    assert _adapters(vllm) == ["v0002-users"]  # a gateway's adapter is not the trainer's to unload

    async with engines.open(vllm.version, vllm.model_dir) as (engine, _):
        assert await _one(engine) == vllm.version
        # a deploy relabels the slot (here: the label alone) while the step still samples
        httpx.post(f"{vllm.url}/update_weight_version", json={"new_version": "v0005"}, timeout=10).raise_for_status()
        with pytest.raises(WeightsChangedError, match="v0005"):
            await _one(engine)


async def test_a_vllm_that_dies_mid_rollout_fails_the_run_with_a_clear_message(vllm_shared, vllm, tmp_path):
    """Killed with the real server mid-rollout: the step fails naming vLLM, the prompts finished
    before are on disk (a rerun of the run resumes after them), nothing else is left behind."""
    import asyncio

    from support.sandbox_service import running_sandbox

    from trainer.iterate import Driver
    from trainer.recipe import RetrainRequest, resolve_recipe
    from trainer.rollouts import read_rollouts

    settings = TrainerSettings(state_dir=tmp_path / "state", dev=True, model=str(vllm.model_dir), engine="vllm",
                               vllm_url=vllm.url, vllm_model=vllm.served_name, max_new_tokens=64, max_turns=1,
                               sandbox_url=f"unix://{tmp_path / 'sbx' / 'sandbox.sock'}")
    recipe = resolve_recipe(settings, RetrainRequest(train_limit=12, samples=2, use_logged=False))
    recipe = recipe.model_copy(update={"concurrency": 2})
    driver = Driver(settings, recipe, tmp_path / "run", run_id="job-dies")
    async with running_sandbox(tmp_path / "sbx"):
        await driver.step_prompts(1)
        base = {"version": vllm.version, "path": str(vllm.model_dir), "kind": "full", "lineage_iteration": 1,
                "temperature": 0.8}
        rollouts = asyncio.create_task(driver.step_rollouts(1, base))
        path = driver.rd.iter_dir(1) / "rollouts.jsonl"
        for _ in range(600):  # until the first prompt is finished and written
            if (path.is_file() and path.read_bytes().count(b"\n") >= 1) or rollouts.done():  # no read_rollouts: it trims
                break
            await asyncio.sleep(0.2)
        assert driver.rep.now.engine == "vllm"
        await asyncio.to_thread(vllm_shared.server.stop)  # the real server, its engine processes too
        with pytest.raises(RuntimeError, match=f"the vLLM server at {vllm.url} stopped answering during rollouts"):
            await rollouts
        await driver.resources.aclose()
    finished = read_rollouts(path)
    assert 1 <= len(finished) < 12  # what finished before is kept for the rerun
