"""``mathagent bench agent``: agent throughput (episodes per minute) of the in-process engine and
of a real vLLM server on the same checkpoint, at 1, 8 and 32 concurrent episodes, from one run.

Every leg solves the same greedy episodes (synthetic word problems, tool-integrated, the real
sandbox): ``max(concurrency, --episodes)`` of them with at most ``concurrency`` in flight, so a
leg at 1 runs several episodes one after the other instead of timing a single one. Printed per
leg: episodes/min, generated (model) tokens/s, tool calls; then the ratios, among them the goal
of the vLLM issue: vLLM at 32 concurrent >= 3x the in-process engine at 8. The in-process
engine's prompt-prefix store is cleared before each leg (legs share problems). Both engines
serve fp32: the table counts the trajectories whose tokens match the in-process engine's at the
same concurrency.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from agent.trajectory import SegmentKind, Trajectory


class LegResult(BaseModel):
    engine: str
    concurrency: int
    episodes: int
    seconds: float
    model_tokens: int
    tool_calls: int
    correct: int

    @property
    def episodes_per_min(self) -> float:
        return self.episodes / self.seconds * 60

    @property
    def tokens_per_s(self) -> float:
        return self.model_tokens / self.seconds


def _model_tokens(trajs: list[Trajectory]) -> int:
    return sum(len(s.token_ids) for t in trajs for s in t.segments if s.kind is SegmentKind.model)


async def _legs(
    engines: tuple[str, ...],
    levels: tuple[int, ...],
    min_episodes: int,
    max_new_tokens: int,
    max_turns: int,
    seed: int,
    vllm: Any,
    console: Console,
) -> tuple[list[LegResult], dict[Any, list[Trajectory]]]:
    from agent.configuration import load
    from agent.datasets import synthetic_problems
    from agent.engines.base import GenerationRequest
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import resolve
    from agent.runtime import Resources
    from agent.settings import AgentSettings
    from mathagent.bench.vllm import leg_engine

    settings = load(AgentSettings)
    resolved = resolve(settings.model, settings.state_dir)
    problems = synthetic_problems(max(max(levels), min_episodes), seed=seed)
    cfg = settings.solver_settings().model_copy(
        update={"max_turns": max_turns, "max_new_tokens": max_new_tokens}
    )
    rows: list[LegResult] = []
    trajectories: dict[Any, list[Trajectory]] = {}
    async with Resources(settings, solver_settings=cfg) as res:
        sandbox = await res.sandbox()
        console.print(
            f"[dim]{res.sandbox_note}; model {settings.model} ({resolved.version}); max_new_tokens "
            f"{max_new_tokens}, max_turns {max_turns}[/]"
        )
        for name in engines:
            engine: Any = await leg_engine(name, res, resolved, vllm, console)
            try:
                solver = res.solver(engine, sandbox)
                await engine.generate(
                    GenerationRequest(prompt_ids=engine.encode("warm up"), max_new_tokens=4)
                )
                for c in levels:
                    local = engine if isinstance(engine, TransformersEngine) else None
                    if local is not None:
                        local.clear_prefix_cache()
                    before = dataclasses.asdict(local.stats) if local else {}
                    todo = problems[: max(c, min_episodes)]
                    gate = asyncio.Semaphore(c)

                    async def one(p: Any, gate: asyncio.Semaphore = gate, solver: Any = solver) -> Any:
                        async with gate:
                            return await solver.solve(p.problem, gold=p.gold, source="eval")

                    t0 = time.perf_counter()
                    with console.status(f"{name}: {len(todo)} episodes, {c} at a time..."):
                        results = await asyncio.gather(*(one(p) for p in todo))
                    dt = time.perf_counter() - t0
                    trajs = [r.trajectories[0] for r in results]
                    trajectories[(name, c)] = trajs
                    row = LegResult(
                        engine=name,
                        concurrency=c,
                        episodes=len(trajs),
                        seconds=dt,
                        model_tokens=_model_tokens(trajs),
                        tool_calls=sum(t.n_tool_calls for t in trajs),
                        correct=sum(bool(r.correct) for r in results),
                    )
                    rows.append(row)
                    note = ""
                    if local is not None:
                        d = {k: v - before[k] for k, v in dataclasses.asdict(local.stats).items()}
                        note = (
                            f"; prefilled {d['prefill_tokens']} prompt tokens, reused {d['prefix_reused_tokens']}; "
                            f"prefill {d['prefill_seconds']:.1f}s, decode {d['decode_seconds']:.1f}s "
                            f"({d['rows_decoded'] / max(1, d['decode_steps']):.1f} rows per step)"
                        )
                    console.print(
                        f"[dim]{name} @ {c}: {len(trajs)} episodes in {dt:.1f}s, {row.model_tokens} model "
                        f"tokens{note}[/]"
                    )
            finally:
                await engine.aclose()
    return rows, trajectories


def _report(
    rows: list[LegResult], trajectories: dict[Any, list[Trajectory]], levels: tuple[int, ...]
) -> None:
    by = {(r.engine, r.concurrency): r for r in rows}
    table = Table(title="mathagent bench agent (same checkpoint, real sandbox, greedy)")
    for col in (
        "engine",
        "concurrent",
        "episodes",
        "seconds",
        "episodes/min",
        "model tokens",
        "tokens/s",
        "tool calls",
        "correct",
        "same tokens as in-process",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        same = ""
        ref = trajectories.get(("in-process", r.concurrency))
        if r.engine != "in-process" and ref is not None:
            mine = trajectories[(r.engine, r.concurrency)]
            same = (
                f"{sum(a.token_ids() == b.token_ids() for a, b in zip(mine, ref, strict=True))}/{len(mine)}"
            )
        table.add_row(
            r.engine,
            str(r.concurrency),
            str(r.episodes),
            f"{r.seconds:.1f}",
            f"{r.episodes_per_min:.2f}",
            str(r.model_tokens),
            f"{r.tokens_per_s:.1f}",
            str(r.tool_calls),
            str(r.correct),
            same,
        )
    Console(width=140).print(table)
    for name in ("in-process", "vllm"):
        one = by.get((name, 1))
        for c in levels:
            if one and c != 1 and (name, c) in by:
                print(
                    f"{name}: {c} concurrent / 1 at a time: {by[(name, c)].episodes_per_min / one.episodes_per_min:.2f}x "
                    "episodes/min"
                )
    for c in levels:
        if ("vllm", c) in by and ("in-process", c) in by:
            print(
                f"vLLM / in-process at {c} concurrent: "
                f"{by[('vllm', c)].episodes_per_min / by[('in-process', c)].episodes_per_min:.2f}x episodes/min"
            )
    top = max(levels)
    if ("vllm", top) in by and ("in-process", 8) in by:
        ratio = by[("vllm", top)].episodes_per_min / by[("in-process", 8)].episodes_per_min
        print(f"vLLM @ {top} / in-process @ 8: {ratio:.2f}x episodes/min (goal >= 3x)")


def run_bench(
    *,
    episodes: int,
    max_new_tokens: int,
    max_turns: int,
    seed: int,
    engines: tuple[str, ...] = ("in-process", "vllm"),
    levels: tuple[int, ...] = (1, 8, 32),
    vllm_url: str | None = None,
    vllm_model: str | None = None,
) -> int:
    import contextlib

    from agent.configuration import load
    from agent.engines.base import EngineError
    from agent.modelstore import ModelSpecError, resolve
    from agent.runtime import SandboxStartError
    from agent.settings import AgentSettings
    from mathagent.bench.vllm import bench_vllm
    from mathagent.errors import fail
    from mathagent.vllm_server import VLLMServerError

    console = Console(stderr=True)
    try:
        settings = load(AgentSettings)
        model = resolve(settings.model, settings.state_dir).path
        with contextlib.ExitStack() as stack:
            server = (
                stack.enter_context(bench_vllm(model, console, url=vllm_url, served_name=vllm_model))
                if "vllm" in engines
                else None
            )
            rows, trajectories = asyncio.run(
                _legs(engines, levels, episodes, max_new_tokens, max_turns, seed, server, console)
            )
    except (ModelSpecError, SandboxStartError, VLLMServerError, EngineError) as exc:
        return fail(str(exc))
    _report(rows, trajectories, levels)
    return 0
