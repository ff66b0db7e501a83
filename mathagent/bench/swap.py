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
import json
import random
import time
from typing import Any

import httpx
from pydantic import BaseModel, Field

from api.settings import PUBLIC_MODEL_ID
from mathagent.bench.swap_models import random_problem

SWAP_WINDOW_MIN_S = 5.0  # a swap window shorter than this is widened to it (a rate needs some width)


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


async def _client(i: int, url: str, deadline: float, rng: random.Random, out: list[RequestRecord]) -> None:
    routes = [("chat", True), ("solve", False), ("chat", False), ("solve", True)]
    k = i
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        while time.time() < deadline:
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
                 out: list[AdminAction]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as c:
        for at, path, body in plan:
            await asyncio.sleep(max(0.0, t0 + at - time.time()))
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


Plan = list[tuple[float, str, dict[str, Any] | None]]  # (seconds from the start, admin route, body)


def deploy_plan(deploy_at_s: float, deploy_version: str, rollback_at_s: float = 0.0) -> Plan:
    plan: Plan = [(deploy_at_s, "/admin/deploy", {"version": deploy_version})]
    if rollback_at_s > 0:
        plan.append((rollback_at_s, "/admin/rollback", None))
    return plan


async def drive(url: str, token: str, *, clients: int = 8, duration_s: float = 60.0, deploy_at_s: float = 20.0,
                rollback_at_s: float = 40.0, deploy_version: str = "", plan: Plan | None = None,
                seed: int = 0) -> LoadReport:
    """Run the clients for ``duration_s``; deploy ``deploy_version`` at ``deploy_at_s`` and roll back at
    ``rollback_at_s`` (seconds from the start), or follow ``plan``, each action waiting for the one before
    it to settle (drained and retired)."""
    t0 = time.time()
    deadline = t0 + duration_s
    requests: list[RequestRecord] = []
    actions: list[AdminAction] = []
    if plan is None:
        plan = deploy_plan(deploy_at_s, deploy_version, rollback_at_s)
    tasks = [asyncio.create_task(_client(i, url, deadline, random.Random(seed * 1000 + i), requests))
             for i in range(clients)]
    tasks.append(asyncio.create_task(_admin(url, token, t0, plan, actions)))
    await asyncio.gather(*tasks)
    return LoadReport(t0=t0, duration_s=duration_s, requests=sorted(requests, key=lambda r: r.started), actions=actions)


class SwapFigures(BaseModel):
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

    @property
    def ratio(self) -> float:
        return self.swap_rps / self.baseline_rps if self.baseline_rps else 0.0


def figures(report: LoadReport, deploy_version: str) -> SwapFigures:
    deploy = next(a for a in report.actions if a.kind == "deploy")
    final = deploy.final or deploy.record or {}
    phases = {p["name"]: p["seconds"] for p in final.get("phases", [])}
    start = deploy.sent - report.t0
    finished = (final.get("finished_at") or deploy.answered) - report.t0
    end = max(finished, start + SWAP_WINDOW_MIN_S)
    firsts = [r.first_token_at for r in report.requests
              if r.model_version == deploy_version and r.first_token_at is not None and r.started >= deploy.sent]
    return SwapFigures(
        prepare_s=phases.get("prepare", 0.0), commit_s=phases.get("commit", 0.0), drain_s=phases.get("drain", 0.0),
        retire_s=phases.get("retire", 0.0),
        first_token_new_s=(min(firsts) - deploy.sent) if firsts else None,
        baseline_rps=report.rate(max(0.0, start - (end - start) - 2.0), start), swap_rps=report.rate(start, end),
        window=(round(start, 2), round(end, 2)), requests=len(report.requests), failed=len(report.failed),
    )


def run(*, clients: int = 8, duration_s: float = 30.0, deploy_at_s: float = 15.0, seed: int = 0) -> int:
    """The CLI entry: build the stack, drive it, print the figures; exit 1 if a goal is missed."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with console.status("building the stack (redis, sandbox, two scripted versions, gateway)..."):
        report, deploy_version = asyncio.run(_run_stack(clients, duration_s, deploy_at_s, seed, console))
    f = figures(report, deploy_version)
    table = Table(title=f"hot swap under load: {clients} clients, {duration_s:.0f} s, deploy at {deploy_at_s:.0f} s")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("prepare (checksums, load beside, golden prompts)", f"{f.prepare_s * 1000:.0f} ms")
    table.add_row("commit (registry pointer + engine flip)", f"{f.commit_s * 1000:.1f} ms")
    table.add_row("drain (solves pinned to the old version finish)", f"{f.drain_s * 1000:.0f} ms")
    table.add_row("retire (unload the old weights)", f"{f.retire_s * 1000:.0f} ms")
    table.add_row("first token from the new version (after deploy sent)",
                  f"{f.first_token_new_s * 1000:.0f} ms" if f.first_token_new_s is not None else "none")
    table.add_row("requests/s, baseline window", f"{f.baseline_rps:.2f}")
    table.add_row(f"requests/s, swap window {f.window[0]:.1f}-{f.window[1]:.1f} s", f"{f.swap_rps:.2f}")
    table.add_row("swap / baseline throughput", f"{f.ratio:.0%}  (goal >= 80%)")
    table.add_row("requests, failed", f"{f.requests}, {f.failed}  (goal 0 failed)")
    console.print(table)
    for r in report.failed[:5]:
        console.print(f"[red]failed[/red] {r.route} stream={r.stream}: {r.status} {r.error}")
    return 0 if f.failed == 0 and f.ratio >= 0.8 else 1


async def _run_stack(clients: int, duration_s: float, deploy_at_s: float, seed: int, console: Any) -> tuple[LoadReport, str]:
    import contextlib
    import secrets
    import shutil
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    import uvicorn

    from agent import modelstore
    from agent.configuration import load
    from agent.engines.transformers_engine import TransformersEngine
    from agent.settings import AgentSettings
    from api.app import build_state, close_state, create_app
    from api.settings import GatewaySettings
    from mathagent.bench.swap_models import cached_scripted_model, publish
    from sandbox.local import local_service
    from sandbox.settings import socket_url
    from trainer.registry import Registry

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    shared = load(AgentSettings)
    state_dir = shared.state_dir
    tokenizer = modelstore.load_tokenizer(modelstore.resolve(modelstore.EMBEDDED_SPEC, state_dir).path)
    tmp = Path(tempfile.mkdtemp(prefix="mathagent-bench-swap-"))
    redis_port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cache = state_dir / "test-models"
        cache.mkdir(parents=True, exist_ok=True)
        registry = Registry(tmp / "registry")
        golden = ["apple: what is 2 + 2?", "river stone: what is 10 + 5?"]
        for version, digit, s in (("v0001", "7", 1), ("v0002", "3", 2)):
            model = await asyncio.to_thread(cached_scripted_model, tokenizer, digit, seed=s, cache=cache)
            await asyncio.to_thread(publish, registry, model, tokenizer, version, tmp, golden_problems=golden)
        registry.activate("v0001")
        async with local_service(tmp / "sandbox", dev=shared.dev):
            port = free_port()
            settings = GatewaySettings(
                dev=False, admin_token=secrets.token_hex(24), redis_url=f"redis://127.0.0.1:{redis_port}/0",
                sandbox_url=socket_url(tmp / "sandbox"), state_dir=tmp / "state",
                registry_dir=registry.root, port=port, max_new_tokens=24, max_total_tokens=1024, max_turns=2,
                rate_limit_per_minute=0,
            )
            engine = TransformersEngine(modelstore.load_model(registry.path("v0001")), tokenizer, "v0001", threads=1)
            state = await build_state(settings, engine=engine)
            server = uvicorn.Server(uvicorn.Config(create_app(settings, state=state), host="127.0.0.1", port=port,
                                                   log_level="warning"))
            task = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.02)
            try:
                console.log(f"driving {clients} clients for {duration_s:.0f} s")
                report = await drive(f"http://127.0.0.1:{port}", settings.admin_token.get_secret_value(),
                                     clients=clients, duration_s=duration_s, deploy_at_s=deploy_at_s, rollback_at_s=0,
                                     deploy_version="v0002", seed=seed)
            finally:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 30)
                await close_state(state)
        return report, "v0002"
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
