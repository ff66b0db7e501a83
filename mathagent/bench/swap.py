"""``mathagent bench swap``: a hot swap under load, measured side by side in one run.

Concurrent clients (streamed and non-streamed, ``/v1/chat/completions`` and ``/v1/solve``,
multi-turn tool-using episodes) run against a gateway for a fixed time; an operator deploys the
other version part way through and rolls back later. Printed: prepare, commit and drain times,
the time until the first token from the new version, requests served per second in the swap
window vs a baseline window before it, and the requests that failed (the goal: none, and the
swap window at >= 80% of the baseline throughput).

The same driver (:func:`drive`) is the load test of ``tests/api/test_api_swap_load.py``.
Everything runs for real on loopback: a private ``redis-server``, the sandbox service, the
gateway on uvicorn, two tiny scripted model versions in a temporary registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from agent.engines.base import Completion, Delta, GenerationRequest
from agent.engines.openai_http import OpenAIHTTPEngine
from api.settings import PUBLIC_MODEL_ID
from mathagent.bench.swap_models import random_problem

SWAP_WINDOW_MIN_S = 5.0  # a swap window shorter than this is widened to it (a rate needs some width)
STALL_PHASES = ("drain", "load", "verify")  # an in-place reload holds new generation requests through these


class RequestRecord(BaseModel):
    client: int
    route: str
    stream: bool
    problem: str
    started: float
    ended: float
    ok: bool
    status: int = 0
    model_version: str | None = None
    answer: str | None = None
    trajectory_ids: list[str] = Field(default_factory=list)
    first_token_at: float | None = None
    error: str | None = None


class AdminAction(BaseModel):
    kind: str
    sent: float
    answered: float
    status: int
    record: dict[str, Any] | None = None
    final: dict[str, Any] | None = Field(None, description="the swap record once drained and retired")


class LoadReport(BaseModel):
    t0: float
    duration_s: float
    requests: list[RequestRecord]
    actions: list[AdminAction]

    @property
    def failed(self) -> list[RequestRecord]:
        return [r for r in self.requests if not r.ok]

    def rate(self, start: float, end: float) -> float:
        """Requests completed per second in [start, end) (seconds since t0)."""
        done = [r for r in self.requests if r.ok and start <= r.ended - self.t0 < end]
        return len(done) / max(end - start, 1e-9)


class _Until:
    """When the clients stop: at the deadline, but not before the admin plan is done plus a gap."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.plan_done_at: float | None = None
        self.gap_s = 0.0

    def running(self) -> bool:
        now = time.time()
        return now < self.deadline or self.plan_done_at is None or now < self.plan_done_at + self.gap_s


async def _client(i: int, url: str, until: _Until, rng: random.Random, out: list[RequestRecord]) -> None:
    routes = [("chat", True), ("solve", False), ("chat", False), ("solve", True)]
    k = i
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        while until.running():
            route, stream = routes[k % len(routes)]
            k += 1
            problem = f"[c{i}-{k}] {random_problem(rng)}"
            rec = RequestRecord(client=i, route=route, stream=stream, problem=problem, started=time.time(),
                                ended=0.0, ok=False)
            try:
                await (_chat if route == "chat" else _solve)(c, rec)
            except Exception as exc:  # a dropped connection, a timeout: a failed request
                rec.ok, rec.error = False, f"{type(exc).__name__}: {exc}"[:300]
            rec.ended = time.time()
            out.append(rec)


async def _chat(c: httpx.AsyncClient, rec: RequestRecord) -> None:
    body = {"model": PUBLIC_MODEL_ID, "messages": [{"role": "user", "content": rec.problem}], "stream": rec.stream}
    if not rec.stream:
        r = await c.post("/v1/chat/completions", json=body)
        rec.status = r.status_code
        if r.status_code == 200:
            data = r.json()
            rec.ok, rec.model_version, rec.answer = True, data["model_version"], data.get("answer")
            rec.trajectory_ids = [data["trajectory_id"]]
        else:
            rec.error = r.text[:300]
        return
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        rec.status = r.status_code
        done = False
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                rec.error = json.dumps(chunk["error"])[:300]
                return
            rec.model_version = chunk.get("model_version", rec.model_version)
            if chunk.get("trajectory_id") and not rec.trajectory_ids:
                rec.trajectory_ids = [chunk["trajectory_id"]]
            delta = (chunk.get("choices") or [{}])[0].get("delta", {})
            if delta.get("content") and rec.first_token_at is None:
                rec.first_token_at = time.time()
        rec.ok = r.status_code == 200 and done and rec.error is None


async def _solve(c: httpx.AsyncClient, rec: RequestRecord) -> None:
    body = {"problem": rec.problem, "max_turns": 2, "stream": rec.stream}
    if not rec.stream:
        r = await c.post("/v1/solve", json=body)
        rec.status = r.status_code
        if r.status_code == 200:
            data = r.json()
            rec.ok, rec.model_version, rec.answer = True, data["model_version"], data.get("answer")
            rec.trajectory_ids = list(data["trajectory_ids"])
        else:
            rec.error = r.text[:300]
        return
    async with c.stream("POST", "/v1/solve", json=body) as r:
        rec.status = r.status_code
        event = ""
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
                if event == "error":
                    rec.error = json.dumps(data)[:300]
                elif event == "start":
                    rec.model_version = data.get("model_version")
                elif event == "text" and data.get("text") and rec.first_token_at is None:
                    rec.first_token_at = time.time()
                elif event == "done":
                    result = data["result"]
                    rec.ok = rec.error is None
                    rec.answer = result.get("answer")
                    rec.model_version = result.get("model_version", rec.model_version)
                    rec.trajectory_ids = list(result.get("trajectory_ids", []))


async def _admin(url: str, token: str, t0: float, plan: list[tuple[float, str, dict[str, Any] | None]],
                 out: list[AdminAction], until: _Until, gap_s: float = 0.0) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    settled = 0.0
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as c:
            for at, path, body in plan:
                await asyncio.sleep(max(0.0, t0 + at - time.time(), settled + gap_s - time.time()))
                sent = time.time()
                r = await c.post(path, json=body) if body is not None else await c.post(path)
                action = AdminAction(kind=path.rsplit("/", 1)[-1], sent=sent, answered=time.time(), status=r.status_code,
                                     record=r.json() if r.status_code == 200 else {"error": r.text[:500]})
                out.append(action)
                if r.status_code != 200:
                    continue
                swap_id = action.record["id"] if action.record else None
                while True:  # until drained and retired (or rolled back)
                    history = (await c.get("/admin/versions")).json()["history"]
                    mine = next((h for h in history if h["id"] == swap_id), None)
                    if mine is None or mine["status"] not in ("running", "committed"):
                        action.final = mine
                        break
                    await asyncio.sleep(0.05)
                settled = time.time()
    finally:
        until.gap_s, until.plan_done_at = gap_s, time.time()


Plan = list[tuple[float, str, dict[str, Any] | None]]  # (seconds from the start, admin route, body)


def deploy_plan(deploy_at_s: float, deploy_version: str, rollback_at_s: float = 0.0) -> Plan:
    plan: Plan = [(deploy_at_s, "/admin/deploy", {"version": deploy_version})]
    if rollback_at_s > 0:
        plan.append((rollback_at_s, "/admin/rollback", None))
    return plan


async def drive(url: str, token: str, *, clients: int = 8, duration_s: float = 60.0, deploy_at_s: float = 20.0,
                rollback_at_s: float = 40.0, deploy_version: str = "", plan: Plan | None = None,
                gap_s: float = 0.0, seed: int = 0) -> LoadReport:
    """Run the clients for ``duration_s``; deploy ``deploy_version`` at ``deploy_at_s`` and roll back at
    ``rollback_at_s`` (seconds from the start), or follow ``plan``, each action waiting for the one before
    it to settle (drained and retired) and then ``gap_s`` more (so each version serves a while, however
    long a swap took). The clients run for ``duration_s``, and on until ``gap_s`` after the plan's last
    action settled."""
    t0 = time.time()
    until = _Until(t0 + duration_s)
    requests: list[RequestRecord] = []
    actions: list[AdminAction] = []
    if plan is None:
        plan = deploy_plan(deploy_at_s, deploy_version, rollback_at_s)
    tasks = [asyncio.create_task(_client(i, url, until, random.Random(seed * 1000 + i), requests))
             for i in range(clients)]
    tasks.append(asyncio.create_task(_admin(url, token, t0, plan, actions, until, gap_s)))
    await asyncio.gather(*tasks)
    return LoadReport(t0=t0, duration_s=time.time() - t0, requests=sorted(requests, key=lambda r: r.started), actions=actions)


class SwapFigures(BaseModel):
    method: str = ""
    prepare_s: float
    commit_s: float
    drain_s: float
    retire_s: float
    first_token_new_s: float | None = Field(description="deploy sent -> first streamed token of a solve on the new version")
    baseline_rps: float
    swap_rps: float
    window: tuple[float, float]
    requests: int
    failed: int
    stall_s: float = Field(0.0, description="an in-place reload: seconds new generation requests were held "
                           "(drain, load, verify)")

    @property
    def ratio(self) -> float:
        return self.swap_rps / self.baseline_rps if self.baseline_rps else 0.0


def figures(report: LoadReport, deploy_version: str, deploy: AdminAction | None = None) -> SwapFigures:
    """The figures of ``deploy`` (default: the first deploy of the run), which put ``deploy_version`` in."""
    deploy = deploy or next(a for a in report.actions if a.kind == "deploy")
    final = deploy.final or deploy.record or {}
    phases = {p["name"]: p["seconds"] for p in final.get("phases", [])}
    start = deploy.sent - report.t0
    finished = (final.get("finished_at") or deploy.answered) - report.t0
    end = max(finished, start + SWAP_WINDOW_MIN_S)
    firsts = [r.first_token_at for r in report.requests
              if r.model_version == deploy_version and r.first_token_at is not None and r.started >= deploy.sent]
    return SwapFigures(
        method=str(final.get("method", "")), stall_s=sum(phases.get(p, 0.0) for p in STALL_PHASES),
        prepare_s=phases.get("prepare", 0.0), commit_s=phases.get("commit", 0.0), drain_s=phases.get("drain", 0.0),
        retire_s=phases.get("retire", 0.0),
        first_token_new_s=(min(firsts) - deploy.sent) if firsts else None,
        baseline_rps=report.rate(max(0.0, start - (end - start) - 2.0), start), swap_rps=report.rate(start, end),
        window=(round(start, 2), round(end, 2)), requests=len(report.requests), failed=len(report.failed),
    )


def _table(f: SwapFigures, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("method", f.method)
    table.add_row("prepare (checksums, load beside, golden prompts)", f"{f.prepare_s * 1000:.0f} ms")
    table.add_row("commit (registry pointer + engine flip)", f"{f.commit_s * 1000:.1f} ms")
    table.add_row("drain (solves pinned to the old version finish)", f"{f.drain_s * 1000:.0f} ms")
    table.add_row("retire (unload the old weights)", f"{f.retire_s * 1000:.0f} ms")
    if f.method == "in-place-reload":
        table.add_row("admission stall (drain + load + verify: new generations wait)", f"{f.stall_s * 1000:.0f} ms")
    table.add_row("first token from the new version (after deploy sent)",
                  f"{f.first_token_new_s * 1000:.0f} ms" if f.first_token_new_s is not None else "none")
    table.add_row("requests/s, baseline window", f"{f.baseline_rps:.2f}")
    table.add_row(f"requests/s, swap window {f.window[0]:.1f}-{f.window[1]:.1f} s", f"{f.swap_rps:.2f}")
    table.add_row("swap / baseline throughput", f"{f.ratio:.0%}")
    table.add_row("requests in the run, failed", f"{f.requests}, {f.failed}  (goal 0 failed)")
    return table


def run(*, clients: int = 8, duration_s: float = 30.0, deploy_at_s: float = 15.0, seed: int = 0,
        engine: str = "transformers", vllm_url: str | None = None, vllm_model: str | None = None) -> int:
    """The CLI entry: build the stack, drive it, print the figures; exit 1 if a goal is missed.
    ``engine="vllm"``: real vLLM serving SmolLM2, a LoRA version deployed blue/green at
    ``deploy_at_s``, rolled back, then a full version reloaded in place (goals: 0 failed, the LoRA
    swap window >= 90% of the baseline; the reload's admission stall is reported)."""
    from rich.console import Console

    console = Console()
    if engine == "vllm":
        from mathagent.vllm_server import VLLMServerError

        try:
            report, mixed = asyncio.run(_run_stack_vllm(clients, duration_s, deploy_at_s, seed, console, vllm_url,
                                                        vllm_model))
        except VLLMServerError as exc:
            from mathagent.errors import fail

            return fail(str(exc))
        deploys = [a for a in report.actions if a.kind == "deploy"]
        if len(deploys) != 2 or any(a.status != 200 for a in report.actions):
            console.print(f"[red]an admin action failed[/red]: {[(a.kind, a.status, a.record) for a in report.actions]}")
            return 1
        lora_f, full_f = figures(report, "v0001", deploys[0]), figures(report, "v0002", deploys[1])
        console.print(_table(lora_f, f"LoRA hot swap on vLLM under load: {clients} clients, {duration_s:.0f} s"))
        console.print(_table(full_f, "full weights reloaded in place on vLLM, same run"))
        for r in report.failed[:5]:
            console.print(f"[red]failed[/red] {r.route} stream={r.stream}: {r.status} {r.error}")
        console.print(f"LoRA swap window / baseline: {lora_f.ratio:.0%} (goal >= 90%); full reload: admission stall "
                      f"{full_f.stall_s:.2f} s, window / baseline {full_f.ratio:.0%}; failed requests "
                      f"{len(report.failed)} of {len(report.requests)}; episodes answered by more than one version, "
                      f"or by another than they name: {len(mixed)}" + (f" {mixed[:5]}" if mixed else ""))
        return 0 if not report.failed and not mixed and lora_f.ratio >= 0.9 else 1
    with console.status("building the stack (redis, sandbox, two scripted versions, gateway)..."):
        report, deploy_version = asyncio.run(_run_stack(clients, duration_s, deploy_at_s, seed, console))
    f = figures(report, deploy_version)
    console.print(_table(f, f"hot swap under load: {clients} clients, {duration_s:.0f} s, deploy at {deploy_at_s:.0f} s"))
    for r in report.failed[:5]:
        console.print(f"[red]failed[/red] {r.route} stream={r.stream}: {r.status} {r.error}")
    console.print(f"swap / baseline throughput {f.ratio:.0%} (goal >= 80%), failed {f.failed}")
    return 0 if f.failed == 0 and f.ratio >= 0.8 else 1


class RecordsServed:
    """Mixed into an engine class (as the first base): notes per generation request (prompt ids,
    the version asked for, the version that reported serving it) in ``served``, what
    :func:`mixed_episodes` and the in-process load test check trajectories against."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served: list[tuple[list[int], str | None, str]] = []

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        out: list[Completion] = await super().generate(request)  # type: ignore[misc]  # the engine base class
        for c in out:
            self.served.append((list(request.prompt_ids), request.version, c.model_version))
        return out

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        async for delta in super().stream(request):  # type: ignore[misc]  # the engine base class
            if delta.done is not None:
                self.served.append((list(request.prompt_ids), request.version, delta.done.model_version))
            yield delta


class RecordingEngine(RecordsServed, OpenAIHTTPEngine):
    """The vLLM engine, recording what served each generation request."""


async def mixed_episodes(url: str, report: LoadReport, engine: RecordsServed) -> list[str]:
    """Trajectories of the run that a version other than the one they name took part in (a
    generation request of the episode asked for, or was answered by, another version); or that
    no generation request can be found for. Empty when every episode ran on one version."""
    bad: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for r in report.requests:
            for tid in r.trajectory_ids:
                traj = (await c.get(f"/v1/trajectories/{tid}")).json()["trajectory"]
                prompt = traj["segments"][0]["token_ids"]
                mine = [(asked, by) for ids, asked, by in engine.served if ids[: len(prompt)] == prompt]
                if not mine or {asked for asked, _ in mine} | {by for _, by in mine} != {traj["model_version"]}:
                    bad.append(tid)
    return bad


@contextlib.asynccontextmanager
async def _gateway(tmp: Path, model: Any, /, *, engine_is_base: bool = False,
                   **settings: Any) -> AsyncIterator[tuple[str, str]]:
    """A private ``redis-server``, the sandbox service and the gateway on uvicorn (loopback), on
    the engine ``model``; ``settings`` are GatewaySettings fields. Yields (url, admin token)."""
    import secrets
    import subprocess

    import uvicorn

    from agent.configuration import load
    from agent.settings import AgentSettings
    from api.app import build_state, close_state, create_app
    from api.settings import GatewaySettings
    from mathagent.vllm_server import free_port
    from sandbox.local import local_service
    from sandbox.settings import socket_url

    redis_port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with local_service(tmp / "sandbox", dev=load(AgentSettings).dev):
            port = free_port()
            gw = GatewaySettings(
                dev=False, admin_token=secrets.token_hex(24), redis_url=f"redis://127.0.0.1:{redis_port}/0",
                sandbox_url=socket_url(tmp / "sandbox"), state_dir=tmp / "state", port=port, rate_limit_per_minute=0,
                **settings,
            )
            state = await build_state(gw, engine=model, engine_is_base=engine_is_base)
            server = uvicorn.Server(uvicorn.Config(create_app(gw, state=state), host="127.0.0.1", port=port,
                                                   log_level="warning"))
            task = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.02)
            try:
                yield f"http://127.0.0.1:{port}", gw.admin_token.get_secret_value()
            finally:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 30)
                await close_state(state)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


async def _run_stack(clients: int, duration_s: float, deploy_at_s: float, seed: int, console: Any) -> tuple[LoadReport, str]:
    import shutil
    import tempfile

    from agent import modelstore
    from agent.configuration import load
    from agent.engines.transformers_engine import TransformersEngine
    from agent.settings import AgentSettings
    from mathagent.bench.swap_models import cached_scripted_model, publish
    from trainer.registry import Registry

    state_dir = load(AgentSettings).state_dir
    tokenizer = modelstore.load_tokenizer(modelstore.resolve(modelstore.EMBEDDED_SPEC, state_dir).path)
    tmp = Path(tempfile.mkdtemp(prefix="mathagent-bench-swap-"))
    try:
        cache = state_dir / "test-models"
        cache.mkdir(parents=True, exist_ok=True)
        registry = Registry(tmp / "registry")
        golden = ["apple: what is 2 + 2?", "river stone: what is 10 + 5?"]
        for version, digit, s in (("v0001", "7", 1), ("v0002", "3", 2)):
            model = await asyncio.to_thread(cached_scripted_model, tokenizer, digit, seed=s, cache=cache)
            await asyncio.to_thread(publish, registry, model, tokenizer, version, tmp, golden_problems=golden)
        registry.activate("v0001")
        engine = TransformersEngine(modelstore.load_model(registry.path("v0001")), tokenizer, "v0001", threads=1)
        async with _gateway(tmp, engine, registry_dir=registry.root, max_new_tokens=24, max_total_tokens=1024,
                            max_turns=2) as (url, token):
            console.log(f"driving {clients} clients for {duration_s:.0f} s")
            report = await drive(url, token, clients=clients, duration_s=duration_s, deploy_at_s=deploy_at_s,
                                 rollback_at_s=0, deploy_version="v0002", seed=seed)
        return report, "v0002"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _run_stack_vllm(clients: int, duration_s: float, deploy_at_s: float, seed: int, console: Any,
                          vllm_url: str | None, vllm_model: str | None) -> tuple[LoadReport, list[str]]:
    """SmolLM2 on real vLLM (LoRA on); v0001 a random LoRA adapter, v0002 SmolLM2 with perturbed
    weights. Deploy v0001 at ``deploy_at_s``, then roll back, then deploy v0002 (in place), each a
    sixth of the remaining time after the action before it settled. Returns the report and the
    mixed episodes (:func:`mixed_episodes`)."""
    import shutil
    import tempfile

    from agent import modelstore
    from agent.configuration import load
    from agent.settings import AgentSettings
    from mathagent.bench.vllm import bench_vllm
    from mathagent.bench.vllm_versions import (
        golden_on_vllm,
        lora_adapter,
        perturbed_checkpoint,
        publish_full,
        publish_lora,
    )
    from trainer.registry import Registry

    state_dir = load(AgentSettings).state_dir
    base = modelstore.resolve(modelstore.EMBEDDED_SPEC, state_dir)
    tokenizer = modelstore.load_tokenizer(base.path)
    tmp = Path(tempfile.mkdtemp(prefix="mathagent-bench-swap-vllm-"))
    cache = state_dir / "test-models"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with bench_vllm(base.path, console, url=vllm_url, served_name=vllm_model, lora=True) as server:
            registry = Registry(tmp / "registry")
            with console.status("building the versions (a LoRA adapter, perturbed full weights) and their goldens..."):
                adapter = await asyncio.to_thread(lora_adapter, base.path, cache / "smollm2-lora-2", seed=2)
                golden = await asyncio.to_thread(golden_on_vllm, server.url, tokenizer, adapter, "golden-recording")
                await asyncio.to_thread(publish_lora, registry, adapter, golden, "v0001", base_version=base.version)
                full = await asyncio.to_thread(perturbed_checkpoint, base.path, cache / "smollm2-perturbed-1", seed=1)
                await asyncio.to_thread(publish_full, registry, full, tokenizer, "v0002")
            engine = RecordingEngine(server.url, tokenizer, model=server.served_name, version=base.version)
            async with _gateway(tmp, engine, engine_is_base=True, engine="vllm", vllm_url=server.url,
                                vllm_model=server.served_name, model=str(base.path), registry_dir=registry.root,
                                max_new_tokens=24, max_total_tokens=1024, max_turns=2) as (url, token):
                plan: Plan = [(deploy_at_s, "/admin/deploy", {"version": "v0001"}),
                              (deploy_at_s, "/admin/rollback", None),
                              (deploy_at_s, "/admin/deploy", {"version": "v0002"})]
                gap = (duration_s - deploy_at_s) / 6  # a swap on a busy CPU server takes a while: room after each
                console.log(f"driving {clients} clients for {duration_s:.0f} s; deploy v0001 (LoRA) at {deploy_at_s:.0f} "
                            f"s, roll back, deploy v0002 (full), each {gap:.0f} s after the one before settled")
                report = await drive(url, token, clients=clients, duration_s=duration_s, plan=plan, gap_s=gap, seed=seed)
                mixed = await mixed_episodes(url, report, engine)
        return report, mixed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
