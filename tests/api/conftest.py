"""Fixtures of the gateway tests: one stack (:mod:`support.gateway_stack`) for the whole session.

The fast app runs a tiny random model (API shapes); the slow app runs the real SmolLM2 (code
cells, the browser test).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.gateway_stack import RunningApp, Stack, model_state_dir

# --import-mode=importlib puts no test folder on sys.path: the vLLM swap tests reuse helpers of
# test_api_swap (a uniquely named module, never a conftest)
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("api-stack"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from agent.modelstore import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2", model_state_dir()).path)


@pytest.fixture(scope="session")
def tiny_app(stack: Stack, tokenizer: Any) -> RunningApp:
    """The gateway on a tiny random model: fast, for API shapes (it never writes code)."""
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import tiny_random_model

    engine = TransformersEngine(tiny_random_model(tokenizer), tokenizer, "tiny-random-v1")
    return stack.serve(engine, max_new_tokens=24, max_total_tokens=1024, rate_limit_per_minute=10_000)


@pytest.fixture(scope="session")
def smol_app(stack: Stack) -> RunningApp:
    """The gateway on the real SmolLM2-135M (slow tests and the browser)."""
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import resolve

    resolved = resolve("smollm2", model_state_dir())
    engine = TransformersEngine.from_path(resolved.path, resolved.version)
    return stack.serve(engine, max_new_tokens=160, max_total_tokens=1400, max_turns=2, rate_limit_per_minute=10_000)


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def gateway_schema(tiny_app: RunningApp) -> Any:
    import schemathesis

    return schemathesis.openapi.from_url(f"{tiny_app.url}/openapi.json")
