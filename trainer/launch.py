"""The training step of an iteration as a subprocess under ``accelerate launch``.

Why a subprocess: the worker stays small and responsive (heartbeat, progress) while training
owns its memory and devices; multi-GPU runs need ``accelerate launch`` anyway; a crash in
training cannot take the worker down.

The child runs ``python -m trainer train-run <config.json>`` (:func:`trainer.train.train` with
``resume=True``), so a restarted worker continues from the last saved state in the output
directory. Progress comes from the ``curves.jsonl`` the training writes after every optimizer
step. The process group id is written next to the config: a restarted worker first kills any
leftover group of a previous worker, so two trainings never write the same directory. Every
process of the chain asks the kernel to SIGKILL it when its parent dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.train import CURVES, STATE, TrainResult

PGID_FILE = "train.pgid"
LOG_FILE = "train.log"
CONFIG_FILE = "train_config.json"
PR_SET_PDEATHSIG = 1


class TrainingFailed(RuntimeError):
    """The training subprocess exited with an error; the message carries the end of its log."""


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): the kernel kills this process when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_leftover(workdir: Path) -> bool:
    """Kill the process group recorded by an earlier launch, if it is still there."""
    pgid_file = workdir / PGID_FILE
    if not pgid_file.is_file():
        return False
    try:
        pgid = int(pgid_file.read_text().strip())
    except ValueError:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return True


def resumable_step(out: Path) -> int:
    """The optimizer step a resumed run starts from (0 when there is no saved state)."""
    progress = out / STATE / "progress.json"
    try:
        return int(json.loads(progress.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def _drop_torn_reference(out: Path) -> None:
    """``train`` writes reference_logps.json in one call; a kill during it leaves it torn,
    and a resumed run would fail on it. Removing it makes the run recompute it."""
    ref = out / "reference_logps.json"
    if ref.is_file():
        try:
            json.loads(ref.read_text())
        except ValueError:
            ref.unlink()


def estimate_steps(n_pairs: int, config: TrainConfig, processes: int) -> int:
    """Optimizer steps of a run on ``n_pairs`` pairs (one item per pair: DPO-type losses)."""
    per_epoch = n_pairs // (config.per_device_batch_size * processes)
    total = math.ceil(per_epoch * config.epochs / config.gradient_accumulation_steps)
    return min(total, config.max_steps) if config.max_steps else total


def train_threads(processes: int, threads: int | None = None) -> int:
    """CPU threads of each training process: ``threads`` when given, else the cores shared out
    among the processes. Said explicitly because ``accelerate launch`` otherwise sets
    OMP_NUM_THREADS=1 in the child (unless launched with ``--cpu``), which left one of two cores
    idle through every CPU training run."""
    return threads or max(1, (os.cpu_count() or 1) // processes)


def launch_command(config_path: Path, processes: int, threads: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", str(train_threads(processes, threads))]
    if processes > 1:
        cmd.append("--multi_gpu")
    return [*cmd, "-m", "trainer", "train-run", str(config_path)]


async def run_training(
    config: TrainConfig,
    workdir: Path,
    *,
    processes: int = 1,
    threads: int | None = None,
    on_step: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    poll_s: float = 0.5,
) -> TrainResult:
    """Train in a subprocess (resuming from ``config.out``'s saved state) and return its result.
    ``threads``: CPU threads of each training process (:func:`train_threads`)."""
    import torch

    workdir.mkdir(parents=True, exist_ok=True)
    kill_leftover(workdir)
    out = Path(config.out)
    _drop_torn_reference(out)
    config = config.model_copy(update={"resume": True, "progress": False})
    config_path = workdir / CONFIG_FILE
    config_path.write_text(config.model_dump_json(indent=2))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    log = open(workdir / LOG_FILE, "ab")  # noqa: SIM115  (handed to the child; closed below)
    log.write(f"\n--- launch at {time.strftime('%Y-%m-%d %H:%M:%S')} (resume from step {resumable_step(out)})\n".encode())
    log.flush()
    proc = await asyncio.create_subprocess_exec(
        *launch_command(config_path, processes, threads), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        env=env, start_new_session=True, preexec_fn=die_with_parent,
    )
    (workdir / PGID_FILE).write_text(str(proc.pid))
    curves = out / CURVES
    seen = 0
    try:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), poll_s)
            if curves.is_file() and on_step is not None:
                with open(curves, encoding="utf-8") as f:
                    lines = f.read().splitlines()
                if len(lines) < seen:  # a fresh run truncated the file
                    seen = 0
                for line in lines[seen:]:
                    with contextlib.suppress(ValueError):
                        await on_step(json.loads(line))
                seen = len(lines)
            if proc.returncode is not None:
                break
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    finally:
        log.close()
    result_file = out / "train_result.json"
    if proc.returncode != 0 or not result_file.is_file():
        tail = (workdir / LOG_FILE).read_text(errors="replace")[-2000:]
        raise TrainingFailed(f"training exited with status {proc.returncode}; end of {workdir / LOG_FILE}:\n{tail}")
    return TrainResult.model_validate_json(result_file.read_text())


def train_run_main(config_path: str) -> int:
    """The child's entry point (``python -m trainer train-run CONFIG``)."""
    from trainer.train import train

    die_with_parent()
    config = TrainConfig.model_validate_json(Path(config_path).read_text())
    result = train(config)
    print(f"trained {result.steps} steps on {result.items} items; checkpoint in {result.out}", flush=True)
    return 0
