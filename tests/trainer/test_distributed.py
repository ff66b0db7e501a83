"""``accelerate launch`` with two CPU processes gives the losses of one process on the same batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("dist_step.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curves(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "2"], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate = Path(sys.executable).with_name("accelerate")
    # `--cpu` would start ONE process; accelerate's multi-process launcher (torchrun) with
    # ACCELERATE_USE_CPU=1 gives DistributedType.MULTI_CPU over gloo.
    two = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                          str(SCRIPT), str(tmp_path / "two"), "1"],
                         env={**env, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300,
                         check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = curves(tmp_path / "one"), curves(tmp_path / "two")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"]
        for key in ("loss", "logps_chosen", "logps_rejected", "margin"):
            # step 2 also checks that the gradients were averaged across the two processes
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), key
    assert a[1]["loss"] != pytest.approx(a[0]["loss"])  # the step changed the model
