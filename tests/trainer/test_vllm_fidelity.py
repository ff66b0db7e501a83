"""Token fidelity on the real vLLM server: the trajectories training consumes are exactly the
tokens vLLM sampled, and the training code scores them as vLLM did.

Episodes are sampled through the agent loop and the real sandbox on the session's shared vLLM
server (SmolLM2, fp32) with ``logprobs`` requested. For each trajectory:

- its model segments concatenate to exactly the token ids vLLM returned (ids as returned; the
  prompt and the sandbox's observations are tokenized locally, as in production);
- the training code (:func:`trainer.examples.packed_token_logps` on the packed example built by
  :func:`trainer.examples.example_from_trajectory`, the model loaded as training loads it)
  gives every model token the log-probability vLLM reported for it, within ``TOLERANCE``.

Tolerance: both run the same fp32 weights, but with different kernels (vLLM's CPU attention and
fused ops vs the trainer's packed attention), so equal logits to the last bit are not expected.
Measured on this machine kind: max |Δ| 5.4e-05, mean 9.2e-06 nats over 601 model tokens (4
episodes, 4 observations). The bounds, 1e-3 per token and 1e-4 on the mean, sit well above that
and far below what a wrong token, a shifted position or a wrong context changes (tenths of a
nat to several).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch
from support.sandbox_service import running_sandbox

from agent.engines.base import Completion, Delta, GenerationRequest
from agent.engines.openai_http import OpenAIHTTPEngine
from agent.solver import Solver, SolverSettings
from agent.trajectory import Mode, SegmentKind

pytestmark = pytest.mark.slow

TOLERANCE = 1e-3
MEAN_TOLERANCE = 1e-4
PROBLEM = "Use Python to compute the sum of the squares of the integers from 1 to 12, then give the answer."


class LogprobRecorder:
    """The engine, asking for logprobs on every request and keeping every completion."""

    def __init__(self, inner: OpenAIHTTPEngine) -> None:
        self.inner = inner
        self.completions: list[Completion] = []

    def __getattr__(self, name: str) -> Any:  # model_version, encode, decode, chat_prefix
        return getattr(self.inner, name)

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        out = await self.inner.generate(request.model_copy(update={"logprobs": True}))
        self.completions += out
        return out

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        async for delta in self.inner.stream(request.model_copy(update={"logprobs": True})):
            if delta.done is not None:
                self.completions.append(delta.done)
            yield delta

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_sampled_trajectories_rescore_to_the_logprobs_vllm_reported(vllm, tmp_path):
    from agent.modelstore import load_model
    from trainer.examples import example_from_trajectory, pack, packed_token_logps

    engine = LogprobRecorder(OpenAIHTTPEngine.from_path(vllm.url, vllm.model_dir, model=vllm.served_name,
                                                        version=vllm.version))
    settings = SolverSettings(max_turns=3, max_new_tokens=160, max_total_tokens=1024)
    sampled = []
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.aclose)
        sandbox = await stack.enter_async_context(running_sandbox(tmp_path))
        solver = Solver(engine, sandbox, None, settings)
        for seed in range(4):
            engine.completions = []
            result = await solver.solve(PROBLEM, mode=Mode.tir, samples=1, temperature=1.0, seed=seed)
            sampled.append((result.trajectories[0], list(engine.completions)))

    model = load_model(vllm.model_dir)
    model.eval()
    observations = 0
    diffs: list[torch.Tensor] = []
    for traj, completions in sampled:
        model_ids = [t for s in traj.segments if s.kind is SegmentKind.model for t in s.token_ids]
        assert model_ids == [t for c in completions for t in c.token_ids]  # the ids exactly as vLLM returned them
        reported = torch.tensor([lp for c in completions for lp in (c.logprobs or [])], dtype=torch.float64)
        assert len(reported) == len(model_ids) > 0
        observations += sum(s.kind is SegmentKind.observation for s in traj.segments)
        with torch.no_grad():
            rescored = packed_token_logps(model, pack([example_from_trajectory(traj)])).double()
        assert rescored.shape == reported.shape
        diffs.append((rescored - reported).abs())
    every = torch.cat(diffs)
    assert float(every.max()) < TOLERANCE, f"max |Δ logprob| {float(every.max()):.4f} over {len(every)} tokens"
    assert float(every.mean()) < MEAN_TOLERANCE, f"mean |Δ logprob| {float(every.mean()):.5f}"
    assert observations > 0, "no sampled episode ran code: the observation tokens were never between model turns"
    print(f"{len(sampled)} trajectories, {len(every)} model tokens, {observations} observations: "
          f"max |Δ| {float(every.max()):.2e}, mean {float(every.mean()):.2e}")
