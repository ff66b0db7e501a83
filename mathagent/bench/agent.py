"""``mathagent bench agent``: agent throughput with the embedded model, from one run.

The same greedy episodes (synthetic word problems, tool-integrated, real sandbox) run twice on
one engine: all at once (the engine batches their generation) and one at a time. It prints
episodes per minute and generated (model) tokens per second for both, and their ratio. The
goal on the 2-core machine: concurrent >= 3x sequential. The in-process engine's prompt-prefix
store is cleared before each leg, so the sequential leg does not start from the concurrent leg's
prompts (the same problems).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from agent.trajectory import SegmentKind, Trajectory


class LegResult(BaseModel):
    name: str
    episodes: int
    seconds: float
    model_tokens: int
    tool_calls: int

    @property
    def episodes_per_min(self) -> float:
        return self.episodes / self.seconds * 60

    @property
    def tokens_per_s(self) -> float:
        return self.model_tokens / self.seconds


def _model_tokens(trajs: list[Trajectory]) -> int:
    return sum(len(s.token_ids) for t in trajs for s in t.segments if s.kind is SegmentKind.model)


async def _bench(episodes: int, max_new_tokens: int, max_turns: int, seed: int) -> int:
    from agent.configuration import load
    from agent.datasets import synthetic_problems
    from agent.engines.base import GenerationRequest
    from agent.engines.transformers_engine import TransformersEngine
    from agent.runtime import Resources
    from agent.settings import AgentSettings

    settings = load(AgentSettings)
    console = Console(stderr=True)
    problems = synthetic_problems(episodes, seed=seed)
    cfg = settings.solver_settings().model_copy(update={"max_turns": max_turns, "max_new_tokens": max_new_tokens})
    async with Resources(settings, solver_settings=cfg) as res:
        with console.status("loading the model..."):
            engine = await res.engine()
        try:
            sandbox = await res.sandbox()
            console.print(f"[dim]{res.sandbox_note}; model {settings.model} ({engine.model_version}); {episodes} "
                          f"episodes, max_new_tokens {max_new_tokens}, max_turns {max_turns}[/]")
            solver = res.solver(engine, sandbox)
            await engine.generate(GenerationRequest(prompt_ids=engine.encode("warm up"), max_new_tokens=4))

            local = engine if isinstance(engine, TransformersEngine) else None

            def counters() -> dict[str, float]:
                return {} if local is None else dataclasses.asdict(local.stats)

            async def leg(name: str, concurrent: bool) -> tuple[LegResult, list[Trajectory]]:
                if local is not None:
                    local.clear_prefix_cache()
                before = counters()
                t0 = time.perf_counter()
                with console.status(f"{name}: {episodes} episodes..."):
                    if concurrent:
                        results = await asyncio.gather(*(solver.solve(p.problem, gold=p.gold, source="eval")
                                                         for p in problems))
                    else:
                        results = [await solver.solve(p.problem, gold=p.gold, source="eval") for p in problems]
                dt = time.perf_counter() - t0
                trajs = [r.trajectories[0] for r in results]
                row = LegResult(name=name, episodes=len(trajs), seconds=dt, model_tokens=_model_tokens(trajs),
                                tool_calls=sum(t.n_tool_calls for t in trajs))
                d = {k: v - before[k] for k, v in counters().items()}
                note = "" if local is None else (
                    f"; prompt tokens prefilled {d['prefill_tokens']}, reused {d['prefix_reused_tokens']} "
                    f"({d['prefix_hits']} prefix hits); engine time: prefill {d['prefill_seconds']:.1f}s, "
                    f"decode {d['decode_seconds']:.1f}s in {d['decode_steps']} steps "
                    f"({d['rows_decoded'] / max(1, d['decode_steps']):.1f} rows per step)")
                console.print(f"[dim]{name}: {dt:.1f}s, {row.model_tokens} model tokens{note}[/]")
                return row, trajs

            conc, conc_trajs = await leg(f"{episodes} concurrent", True)
            seq, seq_trajs = await leg("sequential", False)
        finally:
            await engine.aclose()

    same = sum(a.token_ids() == b.token_ids() for a, b in zip(conc_trajs, seq_trajs, strict=True))
    table = Table(title="mathagent bench agent (embedded model, real sandbox, greedy)")
    for col in ("run", "episodes", "seconds", "episodes/min", "model tokens", "tokens/s", "tool calls"):
        table.add_column(col, justify="right")
    for r in (seq, conc):
        table.add_row(r.name, str(r.episodes), f"{r.seconds:.1f}", f"{r.episodes_per_min:.2f}", str(r.model_tokens),
                      f"{r.tokens_per_s:.1f}", str(r.tool_calls))
    Console(width=120).print(table)
    print(f"throughput ratio (concurrent / sequential): episodes/min {conc.episodes_per_min / seq.episodes_per_min:.2f}x, "
          f"tokens/s {conc.tokens_per_s / seq.tokens_per_s:.2f}x (goal >= 3x)")
    print(f"identical trajectories batched vs alone: {same}/{episodes}")
    return 0


def run_bench(*, episodes: int, max_new_tokens: int, max_turns: int, seed: int) -> int:
    from agent.modelstore import ModelSpecError
    from agent.runtime import SandboxStartError
    from mathagent.errors import fail

    try:
        return asyncio.run(_bench(episodes, max_new_tokens, max_turns, seed))
    except (ModelSpecError, SandboxStartError) as exc:
        return fail(str(exc))
