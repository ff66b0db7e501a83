"""The training subprocess gets the CPU threads it is given (accelerate launch alone would give it
OMP_NUM_THREADS=1 and leave the other cores idle)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.launch import launch_command, train_threads

PROBE = "import os, torch; print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())\n"


def child_threads(tmp_path: Path, threads: int | None) -> tuple[str, int]:
    """Run the launcher exactly as training does, with a probe script in place of `-m trainer train-run`."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    cmd = launch_command(tmp_path / "config.json", 1, threads)
    assert cmd[-4:] == ["-m", "trainer", "train-run", str(tmp_path / "config.json")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([*cmd[:-4], str(script)], env={**env, "ACCELERATE_USE_CPU": "1"}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    omp, torch_threads = done.stdout.split()[-2:]
    return omp, int(torch_threads)


@pytest.mark.parametrize("threads", sorted({1, os.cpu_count() or 1}))
def test_training_process_runs_with_the_threads_given(tmp_path, threads):
    # (torch caps its threads at the cores, so the probe asks for no more than there are)
    assert child_threads(tmp_path, threads) == (str(threads), threads)


def test_default_is_the_cores_shared_among_the_processes(tmp_path):
    cores = os.cpu_count() or 1
    assert train_threads(1) == cores and train_threads(2) == max(1, cores // 2) and train_threads(4, 5) == 5
    assert child_threads(tmp_path, None) == (str(cores), cores)
    if sys.platform == "linux" and cores > 1:
        # the point of the flag: without it accelerate hands the child a single thread
        script = tmp_path / "probe.py"
        cmd = [*launch_command(tmp_path / "config.json", 1)[:-4], str(script)]
        i = cmd.index("--num_cpu_threads_per_process")
        bare = cmd[:i] + cmd[i + 2:]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        out = subprocess.run(bare, env={**env, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        assert out[-2:] == ["1", "1"]
