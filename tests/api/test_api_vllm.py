"""``MATHAGENT_ENGINE=vllm``: the gateway builds the HTTP engine and serves through it.

Real vLLM cannot run on this project's machines (no GPU); the server here is the project's
vLLM stand-in (:mod:`support.fake_vllm`), which really generates with a tiny random
model and follows vLLM 0.33.0's wire behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from support.gateway_stack import Stack, model_state_dir


@pytest.fixture(scope="module")
def vllm_url(tokenizer: Any) -> Iterator[str]:
    from support.fake_vllm import create_app, serve_in_thread

    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import tiny_random_model

    engine = TransformersEngine(tiny_random_model(tokenizer, seed=5), tokenizer, "fake-base")
    with serve_in_thread(create_app(engine, served_model_name="served-policy")) as url:
        yield url


def test_gateway_on_the_vllm_engine(stack: Stack, vllm_url: str) -> None:
    from api.app import build_engine
    from api.settings import GatewaySettings

    settings = GatewaySettings(dev=True, engine="vllm", vllm_url=vllm_url, vllm_model="served-policy",
                               state_dir=model_state_dir())
    engine = build_engine(settings)
    assert type(engine).__name__ == "OpenAIHTTPEngine"
    app = stack.serve(engine, max_new_tokens=16, max_total_tokens=1024)
    client = openai.OpenAI(base_url=f"{app.url}/v1", api_key="k", max_retries=0)
    completion = client.chat.completions.create(model="mathagent", messages=[{"role": "user", "content": "1+1?"}])
    assert completion.system_fingerprint == engine.model_version
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 16
