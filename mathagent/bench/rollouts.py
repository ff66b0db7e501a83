"""``mathagent bench rollouts``: the rollout phase of one retrain iteration on the in-process
engine and on a real vLLM server, side by side in one run, and what users see meanwhile.

Both legs run the trainer's own rollout step (:func:`trainer.rollouts.run_rollouts`) on the same
prompts (the recipe's training split), samples per prompt, seeds, temperature and turn/token
limits, through the real sandbox, each into a fresh rollouts file. Printed per leg:
trajectories/min, model tokens/s, the sample accuracy; then vLLM / in-process (the trainer
issue's goal: >= 3x trajectories/min on this machine kind).

Users during a retrain (vLLM stack): ``--users`` greedy solves, one after another, on their own
connection to the same vLLM server (what the gateway does for a user), first with nothing else
running, then while the vLLM rollout phase runs again (a third leg, so the users' load does not
count against the vLLM leg); printed: how many succeeded and their p50 / p90 latency in both
conditions.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from agent.trajectory import SegmentKind


class RolloutLeg(BaseModel):
    engine: str
    prompts: int
    samples: int
    trajectories: int
    seconds: float
    model_tokens: int
    correct: int

    @property
    def per_min(self) -> float:
        return self.trajectories / self.seconds * 60


class UserLatency(BaseModel):
    condition: str
    seconds: list[float]
    failed: int

    def quantile(self, q: float) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


USER_PROBLEM = "A shop sells pencils at 3 dollars each. How much do 14 pencils cost?"


async def _users(engine: Any, sandbox: Any, settings: Any, n: int, condition: str,
                 until: asyncio.Event | None = None) -> UserLatency:
    """``n`` greedy solves one after another (or, with ``until``, until it is set, at least one)."""
    from agent.engines.base import EngineError
    from agent.solver import Solver

    solver = Solver(engine, sandbox, None, settings)
    out = UserLatency(condition=condition, seconds=[], failed=0)
    while True:
        t0 = time.perf_counter()
        try:
            await solver.solve(USER_PROBLEM, source="api")
            out.seconds.append(time.perf_counter() - t0)
        except EngineError:
            out.failed += 1
        done = len(out.seconds) + out.failed
        if (until is None and done >= n) or (until is not None and until.is_set()):
            return out


async def _legs(engines: tuple[str, ...], prompts_n: int, samples: int, concurrency: int, max_new_tokens: int,
                max_turns: int, temperature: float, seed: int, users: int, vllm: Any,
                console: Console) -> tuple[list[RolloutLeg], list[UserLatency]]:
    from agent.configuration import load
    from agent.engines.base import GenerationRequest
    from agent.modelstore import load_tokenizer, resolve
    from agent.runtime import Resources
    from agent.solver import Solver
    from mathagent.bench.vllm import leg_engine
    from trainer.collect import dataset_split, from_problem
    from trainer.recipe import RetrainRequest, resolve_recipe
    from trainer.rollouts import run_rollouts
    from trainer.settings import TrainerSettings

    settings = load(TrainerSettings)
    resolved = resolve(settings.model, settings.state_dir)
    recipe = resolve_recipe(settings, RetrainRequest(dataset="synthetic", train_limit=prompts_n, samples=samples,
                                                     seed=seed, use_logged=False))
    prompts = [from_problem(p) for p in dataset_split(recipe).train]
    cfg = settings.solver_settings().model_copy(update={"max_turns": max_turns, "max_new_tokens": max_new_tokens})
    tokenizer = load_tokenizer(resolved.path)
    legs: list[RolloutLeg] = []
    latencies: list[UserLatency] = []
    async with Resources(settings, solver_settings=cfg) as res:
        sandbox = await res.sandbox()
        console.print(f"[dim]{res.sandbox_note}; model {settings.model} ({resolved.version}); {len(prompts)} prompts "
                      f"x {samples} samples, {concurrency} prompts in flight, temperature {temperature}, "
                      f"max_new_tokens {max_new_tokens}, max_turns {max_turns}[/]")
        async def leg(name: str, engine: Any, users_engine: Any = None) -> RolloutLeg:
            """One rollout phase into a fresh file (with ``users_engine``: users solving meanwhile)."""
            solver = Solver(engine, sandbox, None, cfg)
            with tempfile.TemporaryDirectory(prefix="bench-rollouts-") as tmp:
                done = asyncio.Event()
                during = (asyncio.create_task(_users(users_engine, sandbox, cfg, users, "during vLLM rollouts",
                                                     until=done)) if users_engine is not None else None)
                t0 = time.perf_counter()
                with console.status(f"{name}: rollouts of {len(prompts)} prompts x {samples}..."):
                    records = await run_rollouts(solver, prompts, Path(tmp) / "rollouts.jsonl", samples=samples,
                                                 temperature=temperature, concurrency=concurrency, seed=seed,
                                                 iteration=1, tokenizer=tokenizer)
                seconds = time.perf_counter() - t0
                done.set()
                if during is not None:
                    latencies.append(await during)
            trajs = [t for r in records.values() for t in r.trajectories]
            console.print(f"[dim]{name}: {len(trajs)} trajectories in {seconds:.1f}s[/]")
            return RolloutLeg(engine=name, prompts=len(records), samples=samples, trajectories=len(trajs),
                              seconds=seconds, correct=sum(bool(t.correct) for t in trajs),
                              model_tokens=sum(len(s.token_ids) for t in trajs for s in t.segments
                                               if s.kind is SegmentKind.model))

        for name in engines:
            engine = await leg_engine(name, res, resolved, vllm, console)
            try:
                await engine.generate(GenerationRequest(prompt_ids=engine.encode("warm up"), max_new_tokens=4))
                legs.append(await leg(name, engine))
                if name == "vllm" and users:
                    # what users see during a retrain on the vLLM stack: their own connection, as the gateway's
                    user_engine = vllm.engine(resolved.path, resolved.version)
                    try:
                        with console.status(f"{users} user solves on an idle vLLM..."):
                            latencies.append(await _users(user_engine, sandbox, cfg, users, "vLLM idle"))
                        legs.append(await leg("vllm, users meanwhile", engine, user_engine))
                    finally:
                        await user_engine.aclose()
            finally:
                await engine.aclose()
    return legs, latencies


def _report(legs: list[RolloutLeg], latencies: list[UserLatency]) -> None:
    table = Table(title="mathagent bench rollouts (one iteration's rollout phase, same prompts, seeds and limits)")
    for col in ("engine", "prompts", "samples", "trajectories", "seconds", "trajectories/min", "model tokens",
                "tokens/s", "sample accuracy"):
        table.add_column(col, justify="right")
    for leg in legs:
        table.add_row(leg.engine, str(leg.prompts), str(leg.samples), str(leg.trajectories), f"{leg.seconds:.1f}",
                      f"{leg.per_min:.1f}", str(leg.model_tokens), f"{leg.model_tokens / leg.seconds:.1f}",
                      f"{leg.correct / max(1, leg.trajectories):.2f}")
    Console(width=140).print(table)
    by = {leg.engine: leg for leg in legs}
    if "vllm" in by and "in-process" in by:
        print(f"vLLM / in-process: {by['vllm'].per_min / by['in-process'].per_min:.2f}x trajectories/min (goal >= 3x)")
    if latencies:
        lat = Table(title="user solves on the vLLM server (greedy, one after another)")
        for col in ("condition", "solves", "failed", "p50 s", "p90 s"):
            lat.add_column(col, justify="right")
        for u in latencies:
            p50, p90 = u.quantile(0.5), u.quantile(0.9)
            lat.add_row(u.condition, str(len(u.seconds)), str(u.failed), f"{p50:.2f}" if p50 is not None else "-",
                        f"{p90:.2f}" if p90 is not None else "-")
        Console(width=140).print(lat)
        if len(latencies) == 2 and latencies[0].seconds and latencies[1].seconds:
            print(f"user p50 during rollouts / idle: {statistics.median(latencies[1].seconds) / statistics.median(latencies[0].seconds):.2f}x")


def run_bench(*, prompts: int, samples: int, concurrency: int, max_new_tokens: int, max_turns: int, temperature: float,
              seed: int, users: int, engines: tuple[str, ...] = ("in-process", "vllm"), vllm_url: str | None = None,
              vllm_model: str | None = None) -> int:
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
            server = (stack.enter_context(bench_vllm(model, console, url=vllm_url, served_name=vllm_model))
                      if "vllm" in engines else None)
            legs, latencies = asyncio.run(_legs(engines, prompts, samples, concurrency, max_new_tokens, max_turns,
                                                temperature, seed, users, server, console))
    except (ModelSpecError, SandboxStartError, VLLMServerError, EngineError) as exc:
        return fail(str(exc))
    _report(legs, latencies)
    return 0
