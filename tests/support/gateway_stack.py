"""A running gateway stack for tests: a private ``redis-server`` on a free port, the real
sandbox service (:mod:`support.sandbox_service`), gateway apps built by ``api.app.build_state``
and served by uvicorn on loopback ports, all in one background event loop, so tests can be plain
synchronous code using real HTTP clients."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from sandbox.settings import socket_url
from support.paths import model_state_dir  # noqa: F401  (re-exported for the gateway tests)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Loop:
    """An event loop in a daemon thread: the servers and the sandbox live here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="api-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 300) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class RunningApp:
    url: str
    token: str
    redis_url: str
    state: Any
    server: Any
    task: Any

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120), **kw)


class Stack:
    """Private Redis + real sandbox, and gateways started on demand."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = Loop()
        self.redis_port = free_port()
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.redis_port, socket_connect_timeout=0.2).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._sandbox_cm: Any = None
        self.sandbox_url = self.loop.run(self._start_sandbox())
        self.apps: list[RunningApp] = []

    async def _start_sandbox(self) -> str:
        from support.sandbox_service import running_sandbox

        self._sandbox_cm = running_sandbox(self.tmp / "sandbox")
        await self._sandbox_cm.__aenter__()
        return socket_url(self.tmp / "sandbox")

    def serve(self, engine: Any, /, *, engine_is_base: bool = False, **overrides: Any) -> RunningApp:
        """A gateway on ``engine`` (None: the one MATHAGENT_MODEL names, loaded as in production,
        with the configured base model as a version), served with the production uvicorn config."""
        import uvicorn

        from api.app import build_state, create_app
        from api.server import uvicorn_config
        from api.settings import GatewaySettings

        token = secrets.token_hex(24)
        port = free_port()
        settings = GatewaySettings(**{
            "dev": False, "admin_token": token, "redis_url": self.redis_url, "sandbox_url": self.sandbox_url,
            "state_dir": self.tmp / f"state-{port}", "host": "127.0.0.1", "port": port, **overrides,
        })

        async def start() -> RunningApp:
            state = await build_state(settings, engine=engine, engine_is_base=engine_is_base)
            app = create_app(settings, state=state)
            config = uvicorn_config(app, settings, log_level="warning", lifespan="on")
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
            return RunningApp(f"http://127.0.0.1:{port}", token, self.redis_url, state, server, task)

        running = self.loop.run(start())
        self.apps.append(running)
        return running

    def stop_app(self, app: RunningApp) -> None:
        """Stop one gateway (its background tasks too: a vLLM gateway keeps checking its server)."""
        from api.app import close_state

        async def stop() -> None:
            app.server.should_exit = True
            await asyncio.wait_for(app.task, 30)
            await close_state(app.state)

        self.loop.run(stop(), timeout=60)
        self.apps.remove(app)

    def close(self) -> None:
        from api.app import close_state

        async def stop() -> None:
            for app in self.apps:
                app.server.should_exit = True
                await asyncio.wait_for(app.task, 30)
                await close_state(app.state)
            await self._sandbox_cm.__aexit__(None, None, None)
            current = asyncio.current_task()
            leftovers = [t for t in asyncio.all_tasks() if t is not current]
            for t in leftovers:
                t.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        try:
            self.loop.run(stop(), timeout=60)
        finally:
            self.loop.stop()
            self.redis_proc.terminate()
            self.redis_proc.wait(10)


# ---- clients of a running gateway -----------------------------------------------------------


def admin(app: RunningApp) -> httpx.Client:
    return app.client(headers={"Authorization": f"Bearer {app.token}"})


def wait_settled(c: httpx.Client, timeout: float = 60) -> dict[str, Any]:
    """Until no swap is running or draining (the old version retired)."""
    deadline = time.monotonic() + timeout
    while True:
        body = c.get("/admin/versions").json()
        if body["swap"] is None and len(body["resident"]) == 1:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def solve_version(app: RunningApp) -> str:
    with app.client() as c:
        r = c.post("/v1/solve", json={"problem": "what is 1+1?", "mode": "cot"})
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])
