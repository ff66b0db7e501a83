"""Paths the agent tests share (a uniquely named module: several test folders have a conftest)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("MATHAGENT_STATE_DIR", "~/.cache/mathagent")).expanduser()
