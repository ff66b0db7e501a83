"""Root of the suites: makes ``tests/support`` importable as ``support`` (the suites run with
``--import-mode=importlib``, which puts no test folder on ``sys.path``), and holds the fixtures
every suite may use: ``vllm``, one real vLLM server per session (see :mod:`support.vllm`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.vllm import RunningVLLM, SharedVLLM


@pytest.fixture(scope="session")
def vllm_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedVLLM]:
    shared = SharedVLLM(tmp_path_factory.mktemp("vllm"))
    yield shared
    shared.stop()


@pytest.fixture
def vllm(vllm_shared: SharedVLLM) -> Iterator[RunningVLLM]:
    """The shared real vLLM server, started (or restarted) if needed; put back in its base state after the test."""
    yield vllm_shared.running()
    vllm_shared.restore()
