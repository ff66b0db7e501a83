"""The trainer worker end to end: a real arq worker process (``python -m trainer worker``) on a
private redis-server, the real sandbox service, a tiny random model as MATHAGENT_MODEL, the
synthetic data set. One job runs rollouts -> pairs -> training subprocess -> gate -> publish ->
activate; a worker SIGKILLed during training and during publish resumes without a half-made
version and without changing the active version before the end; one key runs one job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis as sync_redis

from trainer.jobs import FINAL_STATES, connect, enqueue_retrain, get_job, list_jobs
from trainer.recipe import RetrainRequest
from trainer.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "mathagent:trainer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path):
    """A private redis-server: arq's keys (arq:queue, arq:job:*) have no configurable prefix."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if sync_redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                break
        except sync_redis.exceptions.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory):
    """The real sandbox service (sandbox.testing.running_sandbox), kept up for the module."""
    from support.sandbox_service import running_sandbox

    tmp = tmp_path_factory.mktemp("sandbox")
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop: asyncio.Event | None = None
    errors: list[BaseException] = []

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with running_sandbox(tmp):
                ready.set()
                await stop.wait()
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(120) and not errors, errors
    yield f"unix://{tmp / 'sandbox.sock'}"
    loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
    thread.join(30)


@pytest.fixture
def env(tmp_path, redis_url, sandbox_url, tiny_model):
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MATHAGENT_STATE_DIR": str(tmp_path / "state"),
        "MATHAGENT_MODEL": str(tiny_model),
        "MATHAGENT_REDIS_URL": redis_url,
        "MATHAGENT_SANDBOX_URL": sandbox_url,
        "MATHAGENT_DEV": "1",
        "MATHAGENT_MAX_NEW_TOKENS": "12",
        "MATHAGENT_MAX_TURNS": "1",
        "MATHAGENT_TRAIN_LIMIT": "4",
        "MATHAGENT_EVAL_LIMIT": "3",
        "MATHAGENT_SAMPLES": "2",
        "MATHAGENT_PAIRS_K": "2",
        "MATHAGENT_BATCH_SIZE": "2",
        "MATHAGENT_LR": "1e-4",
        "MATHAGENT_HEARTBEAT_S": "1",
        "MATHAGENT_LOG_PROMPT_LIMIT": "0",
        "OMP_NUM_THREADS": "1",
    }


class WorkerProc:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra: str) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainer", "worker"], env={**self.env, **extra},
                                         stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker(env, tmp_path):
    w = WorkerProc(env, tmp_path / "worker.log")
    yield w
    w.stop()


async def _wait(pool, job_id, cond, timeout, worker=None, log=None):
    """Poll the job record until ``cond(record)``; returns (record, every record seen)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = await get_job(pool, job_id, prefix=PREFIX)
        if rec is not None:
            seen.append(rec)
            if cond(rec):
                return rec, seen
        if worker is not None and worker.proc is not None and worker.proc.poll() is not None and not cond(rec):
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"worker exited ({worker.proc.returncode}); record {rec}\n{tail}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"timeout; last record {seen[-1] if seen else None}")


def _registry(env) -> Registry:
    return Registry(Path(env["MATHAGENT_STATE_DIR"]) / "registry")


def _base(env) -> str:
    """The version of the configured model: its content id (what the trainer imports it as)."""
    from agent.modelstore import resolve

    return resolve(env["MATHAGENT_MODEL"], Path(env["MATHAGENT_STATE_DIR"])).version


# the tiny random model solves nothing, and the gate refuses a tie at 0%: these jobs test the
# pipeline after the gate, so they say force_promote (the refusal is still recorded)
FORCED = RetrainRequest(iterations=1, force_promote=True)


@pytest.mark.slow
async def test_one_iteration_end_to_end_with_progress_and_one_job_per_key(env, worker, tmp_path):
    pool = await connect(env["MATHAGENT_REDIS_URL"])
    try:
        first = await enqueue_retrain(pool, FORCED, "nightly-1", prefix=PREFIX)
        again = await enqueue_retrain(pool, FORCED, "nightly-1", prefix=PREFIX)
        assert first.created and not again.created and again.job.id == first.job.id
        assert [j.job_id for j in await pool.queued_jobs()] == [first.job.id]

        worker.start()
        done, seen = await _wait(pool, first.job.id, lambda r: r.state in FINAL_STATES, 240, worker, worker.log)
        assert done.state == "succeeded", (done.error, (tmp_path / "worker.log").read_text()[-3000:])
        phases = [r.progress.phase.value for r in seen]
        for phase in ("rollouts", "train", "eval", "done"):
            assert phase in phases
        train_steps = [r.progress.step for r in seen if r.progress.phase.value == "train" and r.progress.step]
        assert train_steps and max(train_steps) >= 1
        assert done.progress.accuracy_current is not None and done.progress.accuracy_candidate is not None
        evals = [r.progress for r in seen if r.progress.phase.value == "eval" and r.state == "running"]
        assert {p.total for p in evals} == {6}  # 3 held-out problems x 2 versions
        assert any(0 < p.done < 6 and p.accuracy_current is not None for p in evals)
        assert done.versions == ["v0002"] and done.attempts == 1
        gate = done.outcome["iterations"][0]["gate"] if done.outcome else {}
        assert gate["forced"] is True and gate["n"] == 3 and "refused" in gate["reason"]

        reg = _registry(env)
        assert reg.pointer().active == "v0002" and reg.pointer().previous == _base(env)
        m = reg.verify("v0002")
        assert m.parent == _base(env) and m.training_config["run_id"] == first.job.id
        assert m.eval_results["accuracy_candidate"] == done.progress.accuracy_candidate and m.eval_results["forced"]
        assert len(m.golden) == 3 and all(g.expected is not None and g.max_new_tokens for g in m.golden)
        assert "model.safetensors" in m.files and "curves.jsonl" not in m.files
        assert reg.manifest(_base(env)).training_config["imported_from"] == env["MATHAGENT_MODEL"]

        # the same key after the job finished: still that one job, nothing queued again
        later = await enqueue_retrain(pool, FORCED, "nightly-1", prefix=PREFIX)
        assert not later.created and later.job.state == "succeeded"
        assert await pool.queued_jobs() == []
        assert [j.id for j in await list_jobs(pool, prefix=PREFIX)] == [first.job.id]
        assert await pool.get("arq:queue:health-check")  # what the gateway's /healthz reads
    finally:
        await pool.aclose()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
async def test_killed_worker_resumes_training_and_publish_without_half_versions(env, worker, tmp_path):
    env["MATHAGENT_EPOCHS"] = "12"  # 4 prompts x K=2 -> 8 pairs, batch 2: 48 steps
    env["MATHAGENT_SAVE_STEPS"] = "4"
    worker.env = env
    pool = await connect(env["MATHAGENT_REDIS_URL"])
    try:
        job = (await enqueue_retrain(pool, FORCED, "kill-test", prefix=PREFIX)).job
        base = _base(env)
        run = Path(env["MATHAGENT_STATE_DIR"]) / "runs" / job.id
        reg = _registry(env)

        # 1. SIGKILL during training, after a saved state (step >= 5)
        worker.start()
        await _wait(pool, job.id, lambda r: r.progress.phase.value == "train" and (r.progress.step or 0) >= 5,
                             240, worker, worker.log)
        worker.kill()
        pgid = int((run / "iter-01" / "train.pgid").read_text())
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(pgid), "the training subprocess outlived its worker"
        assert reg.pointer().active is None and [m.version for m in reg.manifests()] == [base]

        # 2. restarted: training resumes from its saved state; killed again with a version staged
        worker.start(MATHAGENT_TRAINER_CRASH_AT="publish:staged")
        assert worker.wait_exit(240) == -signal.SIGKILL
        assert any(reg.staging.iterdir()), "the crash point is inside the registry's publish"
        assert [m.version for m in reg.manifests()] == [base] and reg.pointer().active is None

        # 3. restarted: staging cleaned, the version published, killed before the run records it
        worker.start(MATHAGENT_TRAINER_CRASH_AT="publish:done")
        assert worker.wait_exit(120) == -signal.SIGKILL
        assert not any(reg.staging.iterdir())
        assert [m.version for m in reg.manifests()] == [base, "v0002"] and reg.pointer().active is None

        # 4. restarted: adopts v0002 (no v0003), deploys it
        worker.start()
        done, _ = await _wait(pool, job.id, lambda r: r.state in FINAL_STATES, 120, worker, worker.log)
        assert done.state == "succeeded", done.error
        assert done.attempts == 4 and done.versions == ["v0002"]
        assert [m.version for m in reg.manifests()] == [base, "v0002"]
        reg.verify("v0002")
        assert reg.pointer().active == "v0002" and not any(reg.staging.iterdir())
        import json

        state = json.loads((run / "state.json").read_text())
        train = state["iterations"][0]["steps"]["train"]["outputs"]
        assert train["resumed_from_step"] >= 4 and train["steps"] == 48
        assert state["iterations"][0]["steps"]["publish"]["outputs"]["adopted"] is True
        assert "resume from step 0" in (run / "iter-01" / "train.log").read_text()
        assert f"resume from step {train['resumed_from_step']}" in (run / "iter-01" / "train.log").read_text()
    finally:
        with contextlib.suppress(Exception):
            await pool.aclose()
