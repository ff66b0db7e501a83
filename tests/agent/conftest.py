from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the suite runs with --import-mode=importlib: make this folder's helper modules importable
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.paths import model_state_dir as state_dir

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"




@pytest.fixture(scope="session")
def tokenizer():
    from agent.modelstore import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2", state_dir()).path)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own on a free port (killable, restartable)."""
    from agent_redis import PrivateRedis

    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()
