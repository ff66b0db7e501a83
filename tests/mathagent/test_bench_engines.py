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


@pytest.mark.slow
def test_bench_rollouts_runs_the_trainers_rollout_step_on_both_engines(vllm: RunningVLLM, tmp_path, monkeypatch,
                                                                       capsys) -> None:
    """Both legs sample every prompt's samples through the trainer's rollout step; the users'
    solves on vLLM are timed idle and during a third, vLLM leg; the ratio line is printed."""
    from support.paths import model_state_dir

    from mathagent.bench.rollouts import run_bench

    for k, v in {"MATHAGENT_STATE_DIR": str(model_state_dir()), "MATHAGENT_MODEL": str(vllm.model_dir),
                 "MATHAGENT_DEV": "1", "MATHAGENT_SANDBOX_URL": f"unix://{tmp_path / 'none.sock'}"}.items():
        monkeypatch.setenv(k, v)
    code = run_bench(prompts=2, samples=2, concurrency=2, max_new_tokens=16, max_turns=1, temperature=0.8, seed=0,
                     users=1, vllm_url=vllm.url, vllm_model=vllm.served_name)
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split("│") for line in out.splitlines() if line.count("│") >= 9]
    legs = {cells[1].strip(): int(cells[4]) for cells in rows}  # engine -> trajectories
    assert legs == {"in-process": 4, "vllm": 4, "vllm, users meanwhile": 4}, out
    assert "vLLM / in-process:" in out and "trajectories/min (goal >= 3x)" in out
    latency = {cells[1].strip(): (int(cells[2]), int(cells[3])) for cells in
               (line.split("│") for line in out.splitlines() if line.count("│") == 6)}
    assert latency["vLLM idle"] == (1, 0) and latency["during vLLM rollouts"][0] >= 1, out  # solves, failed
    assert latency["during vLLM rollouts"][1] == 0, out
