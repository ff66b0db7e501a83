"""Root of the suites: makes ``tests/support`` importable as ``support`` (the suites run with
``--import-mode=importlib``, which puts no test folder on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
