"""Where the provisioned models are: the tests read them there, never download them."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.settings import STATE_DIR


def model_state_dir() -> Path:
    """``MATHAGENT_STATE_DIR`` when set, else the default state directory."""
    return Path(os.environ.get("MATHAGENT_STATE_DIR") or STATE_DIR).expanduser()
