"""The engine benchmark measures both engines on the same requests, against the shared real vLLM
server: each row holds the tokens its engine produced, and vLLM (fp32) produces the in-process
engine's greedy tokens, which is what makes the side-by-side figures comparable."""

from __future__ import annotations

import pytest
from support.vllm import RunningVLLM


@pytest.mark.slow
def test_bench_engine_rows_for_both_engines_with_the_same_greedy_tokens(vllm: RunningVLLM) -> None:
    from mathagent.bench.engine import run

    rows = run(str(vllm.model_dir), new_tokens=12, levels=(1, 3), vllm_url=vllm.url, vllm_model=vllm.served_name)
    assert [(r.engine, r.concurrency) for r in rows] == [("in-process", 1), ("in-process", 3), ("vllm", 1), ("vllm", 3)]
    by = {(r.engine, r.concurrency): r for r in rows}
    for r in rows:
        assert len(r.outputs) == r.concurrency and r.tokens == sum(map(len, r.outputs)) and 0 < r.tokens <= 12 * r.concurrency
        assert r.seconds > 0
    for c in (1, 3):
        assert by[("vllm", c)].outputs == by[("in-process", c)].outputs
