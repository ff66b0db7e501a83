"""``--scale`` defaults per family: the cpu scale gives the IRPO family a longer warm-up and the
M-DPO family easier levels, more samples and smaller batches (its pairs come only from the
model's own samples); an option given explicitly wins. Checked on the header the CLI prints
before any work, with a row name that stops the run before it starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mathagent.cli import app


def _header(tmp_path, *args: str, scale: str = "cpu") -> str:
    result = CliRunner().invoke(app, ["experiment", *args, "--scale", scale, "--rows", "no_such_row",
                                      "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "unknown row no_such_row" in result.output
    assert not (tmp_path / "run" / "config.json").exists()
    return " ".join(result.output.split())


@pytest.mark.parametrize(("family", "expected"), [
    ("irpo", "tasks levels 1,2,3,4,5: 32 training / 40 held-out problems, 4 samples each, maj@4, batch 4, "
             "warm-up 8 epochs"),
    ("mdpo", "tasks levels 1,2,3: 32 training / 40 held-out problems, 8 samples each, maj@4, batch 2, "
             "warm-up 4 epochs"),
])
def test_cpu_scale_defaults_per_family(tmp_path, family, expected):
    assert expected in _header(tmp_path, family)


@pytest.mark.parametrize("family", ["irpo", "mdpo"])
def test_gpu_scale_is_the_larger_budget_for_both_families(tmp_path, family):
    # chosen explicitly here; --scale auto picks it where torch sees CUDA
    out = _header(tmp_path, family, scale="gpu")
    assert "tasks levels 1,2,3,4,5: 256 training / 250 held-out problems, 8 samples each, maj@8, batch 4" in out


def test_explicit_options_win_over_family_defaults(tmp_path):
    out = _header(tmp_path, "mdpo", "--levels", "2-4", "--samples", "3", "--batch-size", "4")
    assert "tasks levels 2,3,4: 32 training / 40 held-out problems, 3 samples each, maj@4, batch 4" in out
    assert "warm-up 3 epochs" in _header(tmp_path, "irpo", "--warmup-epochs", "3")


def test_gsm8k_is_measured_on_200_test_problems_with_longer_turns(tmp_path):
    out = _header(tmp_path, "irpo", "--dataset", "gsm8k")
    assert "gsm8k: 32 training / 200 test-split held-out problems" in out and "256 tokens per turn" in out
    assert "gsm8k: 32 training / 60 test-split held-out problems" in _header(tmp_path, "irpo", "--dataset", "gsm8k",
                                                                               "--eval-limit", "60")
    # the tasks defaults are unchanged
    assert "tasks levels 1,2,3,4,5: 32 training / 40 held-out problems" in _header(tmp_path, "irpo")
    assert "128 tokens per turn" in _header(tmp_path, "irpo")
