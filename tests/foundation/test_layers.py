"""The layering is enforced: api -> trainer -> agent -> sandbox, with the wiring package on top.

``lint-imports`` (import-linter, configured in pyproject.toml) checks every import, function-level
ones included. These tests run it on the project as it is, and on a copy with one upward import
added, which it must refuse; and they check that no product module is test support.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("mathagent", "api", "trainer", "agent", "sandbox")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_layers_hold() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("sandbox/result.py", "agent.trajectory"),  # the bottom layer reaching up
    ("agent/grading.py", "trainer.registry"),
    ("trainer/pairs.py", "api.settings"),
    ("api/errors.py", "mathagent.cli"),  # a service importing the wiring
])
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _late() -> None:\n    import {upward}  # noqa\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and upward in proc.stdout


def test_no_test_support_in_the_product() -> None:
    """Stand-ins and test helpers live under tests/, never in a product package."""
    names = {p.name for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert not names & {"testing.py", "fake_vllm.py", "conftest.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            assert "from support" not in text and "import support" not in text, path
