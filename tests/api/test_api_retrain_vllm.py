"""A retrain job end to end on a real vLLM stack: ``POST /admin/retrain`` on a gateway serving
through the session's shared vLLM server, a real trainer worker process (``python -m trainer
worker``) configured as ``mathagent up --engine vllm`` configures it, and the real sandbox.

The job's rollouts and both evaluations run on the serving vLLM (its progress says ``engine:
vllm``; the LoRA candidate under a private adapter name), the candidate is published as a LoRA
adapter and deployed blue/green by the gateway, users' solves keep succeeding while the job
generates, and no private adapter stays loaded afterwards.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.gateway_stack import ROOT, Stack, admin, solve_version
from support.vllm import RunningVLLM

from trainer.engines import PRIVATE_PREFIX

pytestmark = pytest.mark.slow


def _worker_env(stack: Stack, vllm: RunningVLLM, app: Any, state: Path, registry: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MATHAGENT_STATE_DIR": str(state),
        "MATHAGENT_REGISTRY_DIR": str(registry),
        "MATHAGENT_MODEL": str(vllm.model_dir),
        "MATHAGENT_ENGINE": "vllm",
        "MATHAGENT_VLLM_URL": vllm.url,
        "MATHAGENT_VLLM_MODEL": vllm.served_name,
        "MATHAGENT_REDIS_URL": stack.redis_url,
        "MATHAGENT_SANDBOX_URL": stack.sandbox_url,
        "MATHAGENT_GATEWAY_URL": app.url,
        "MATHAGENT_ADMIN_TOKEN": app.token,
        "MATHAGENT_DEV": "1",
        "MATHAGENT_LORA": "1",
        "MATHAGENT_MAX_NEW_TOKENS": "48",
        "MATHAGENT_MAX_TURNS": "1",
        "MATHAGENT_SAMPLES": "2",
        "MATHAGENT_PAIRS_K": "1",
        "MATHAGENT_BATCH_SIZE": "1",
        "MATHAGENT_LOG_PROMPT_LIMIT": "0",
        "MATHAGENT_GATE_MIN_PROBLEMS": "1",
        "MATHAGENT_HEARTBEAT_S": "1",
        "MATHAGENT_TRAIN_THREADS": "2",
    }


class Users:
    """Solves sent one after another while the job runs; every answer is kept."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.results: list[tuple[int, float, str]] = []  # status, seconds, phase of the job when sent
        self.phase = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.client(timeout=300) as c:
            while not self._stop.is_set():
                phase = self.phase
                if phase not in ("rollouts", "eval"):
                    time.sleep(0.2)
                    continue
                t0 = time.perf_counter()
                r = c.post("/v1/solve", json={"problem": "What is 12 * 7?", "mode": "cot"})
                self.results.append((r.status_code, time.perf_counter() - t0, phase))

    def __enter__(self) -> Users:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(300)


def test_a_retrain_job_samples_and_gates_on_vllm_and_deploys_its_adapter(
        stack: Stack, vllm: RunningVLLM, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    app = stack.serve(None, engine="vllm", vllm_url=vllm.url, vllm_model=vllm.served_name, model=str(vllm.model_dir),
                      registry_dir=registry, max_new_tokens=48, max_total_tokens=1024, max_turns=1,
                      rate_limit_per_minute=0, vllm_check_interval_s=0.5)
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "trainer", "worker"],
                                  env=_worker_env(stack, vllm, app, tmp_path / "trainer-state", registry),
                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seen: list[dict[str, Any]] = []
    idle = []
    with app.client() as c:
        for _ in range(4):  # the same solves with no retrain running
            t0 = time.perf_counter()
            assert c.post("/v1/solve", json={"problem": "What is 12 * 7?", "mode": "cot"}).status_code == 200
            idle.append(time.perf_counter() - t0)
    try:
        with admin(app) as c, Users(app) as users:
            r = c.post("/admin/retrain", json={"train_limit": 2, "eval_limit": 3, "max_steps": 1,
                                               "force_promote": True, "use_logged": False})
            assert r.status_code == 202, r.text
            job_id = r.json()["job"]["id"]
            deadline = time.monotonic() + 1500
            while True:
                job = c.get(f"/admin/jobs/{job_id}").json()
                seen.append(job)
                users.phase = (job.get("progress") or {}).get("phase", "")
                if job["state"] in ("succeeded", "failed", "rejected", "no_pairs"):
                    break
                assert worker.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
        assert job["state"] == "succeeded", (job, log.read_text()[-3000:])
    finally:
        worker.terminate()
        worker.wait(30)

    engines = {(p["phase"], p.get("engine")) for j in seen if (p := j.get("progress"))}
    assert ("rollouts", "vllm") in engines, engines  # the current version is what vLLM's slot serves
    on_eval = {e for phase, e in engines if phase == "eval" and e}
    assert "vllm" in on_eval and any(e.startswith(f"vllm (adapter {PRIVATE_PREFIX}") for e in on_eval), engines
    assert not any(e.startswith("transformers") for _, e in engines if e), engines
    assert not {e for phase, e in engines if phase not in ("rollouts", "eval") and e}, engines  # no engine in train

    it = job["outcome"]["iterations"][0]
    version = it["version"]
    assert it["status"] == "promoted" and version
    with admin(app) as c:
        body = c.get("/admin/versions").json()
    assert body["active"] == version
    assert solve_version(app) == version  # answered by the deployed adapter
    models = [m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"]]
    assert not [m for m in models if m.startswith(PRIVATE_PREFIX)], models  # the trainer's adapters are gone
    assert any(m.startswith(f"{version}-") for m in models), models  # the gateway's adapter of the new version

    assert users.results, "no user solve was sent while the job generated"
    assert all(status == 200 for status, _, _ in users.results), users.results
    during = [t for _, t, phase in users.results if phase == "rollouts"]
    print(f"user solves: idle p50 {statistics.median(idle):.2f}s ({len(idle)}); during rollouts p50 "
          f"{statistics.median(during) if during else float('nan'):.2f}s ({len(during)}); during the job "
          f"{len(users.results)}, all 200")
    stack.stop_app(app)
