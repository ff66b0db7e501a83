"""``mathagent experiment --engine vllm``: every row's rollouts and evaluations on a vLLM server
that serves the experiment alone, reloaded in place with each row's weights.

The session's shared vLLM server (SmolLM2, fp32) stands in for the server the command starts for
an experiment (its start is the command's only extra step); the fixture puts its base weights
back afterwards. Rows: zero-shot (the base weights the server started with), the SFT-on-gold
warm-up and DPO+NLL iteration 1 (each a trained full checkpoint: rollouts of the warm-up and the
evaluation of each reload the server).
"""

from __future__ import annotations

import json

import httpx
import pytest
from support.sandbox_service import running_sandbox

pytestmark = pytest.mark.slow


async def test_rows_roll_out_and_evaluate_on_vllm_with_each_rows_weights(vllm, tmp_path):
    from trainer.experiment import ExperimentError, experiment_config, run_seeds
    from trainer.settings import TrainerSettings

    common = dict(state_dir=tmp_path / "state", dev=True, model=str(vllm.model_dir), max_new_tokens=24, max_turns=1,
                  sandbox_url=f"unix://{tmp_path / 'sbx' / 'sandbox.sock'}")
    config = experiment_config("irpo", "cpu", model=str(vllm.model_dir), engine="vllm", levels=[1], train_limit=2,
                               eval_limit=3, samples=2, maj_k=2, pairs_k=1, max_steps=1, warmup_epochs=1,
                               batch_size=2, max_length=512, max_new_tokens=24, max_turns=1, concurrency=4)
    with pytest.raises(ExperimentError, match="needs its own vLLM server"):
        await run_seeds(config, tmp_path / "refused", TrainerSettings(**common), seeds=1)
    assert not (tmp_path / "refused" / "config.json").exists()  # refused before the run directory is claimed

    settings = TrainerSettings(**common, engine="vllm", vllm_url=vllm.url, vllm_model=vllm.served_name)
    run_dir = tmp_path / "run"
    async with running_sandbox(tmp_path / "sbx"):
        results = (await run_seeds(config, run_dir, settings, seeds=1,
                                   rows=["zero_shot", "sft_gold", "dpo_nll_1"]))[config.seed]
    rows = {r.name: r for r in results}
    assert {n for n, r in rows.items() if r.status == "done"} == {"zero_shot", "sft_gold", "dpo_nll_1"}, rows
    assert json.loads((run_dir / "config.json").read_text())["engine"] == "vllm"
    assert rows["dpo_nll_1"].start == rows["sft_gold"].version  # rolled out from the warm-up's weights
    # the last thing generated was the evaluation of DPO+NLL it.1: vLLM's slot holds its weights now
    label = httpx.get(f"{vllm.url}/weight_info", timeout=10).json()["weight_version"]
    assert label == rows["dpo_nll_1"].version
    assert all(rows[n].greedy is not None and rows[n].greedy.n == 3 for n in ("zero_shot", "sft_gold", "dpo_nll_1"))
