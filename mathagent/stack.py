"""``mathagent up``: start the whole embedded stack and stop every child on Ctrl-C.

Order: provision the model (so a bad spec fails before anything starts), Redis (use the
configured one; if nothing answers on loopback and ``redis-server`` exists, start a private
one with its data under the state dir), the sandbox service, the gateway, the trainer worker
(arq; runs retrain jobs). Each child runs in
its own session with PR_SET_PDEATHSIG, so even if this process is killed hard the children
get SIGTERM; on a normal stop each child's process group gets SIGTERM, then SIGKILL after a
grace period. Logs go to ``<state_dir>/logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console
from rich.table import Table

from agent.modelstore import ModelSpecError
from mathagent.settings import StackSettings
from sandbox.settings import SOCKET_NAME

console = Console(stderr=True)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StackError(RuntimeError):
    """A component could not start; the message is one line naming the setting or the fix."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    where: str
    log: Path


def _pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the launcher


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _wait(what: str, ready: Callable[[], bool], child: Child | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.proc.poll() is not None:
            tail = child.log.read_text(errors="replace").strip().splitlines()[-5:] if child.log.exists() else []
            raise StackError(f"{what} exited with status {child.proc.returncode}; last log lines:\n  " + "\n  ".join(tail))
        if ready():
            return
        time.sleep(0.2)
    raise StackError(f"{what} did not become healthy within {timeout:.0f}s (see {child.log if child else ''})")


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.children: list[Child] = []
        self.logs = settings.state_dir / "logs"
        self.env = dict(os.environ)

    def spawn(self, name: str, argv: list[str], where: str, env: dict[str, str] | None = None) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab", opener=lambda path, flags: os.open(path, flags, 0o600)) as fh:
            os.fchmod(fh.fileno(), 0o600)  # logs may hold request details: the owner's only (also one made earlier)
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                env=env if env is not None else self.env, start_new_session=True, preexec_fn=_pdeathsig,
            )
        child = Child(name, proc, where, log)
        self.children.append(child)
        return child

    # -- components -------------------------------------------------------------------------
    def model(self) -> str:
        from agent import modelstore

        resolved = modelstore.resolve(self.s.model, self.s.state_dir)
        return f"{self.s.model} ({resolved.version}) at {resolved.path}"

    def redis(self) -> str:
        url = self.s.redis_url
        if redis_answers(url):
            return f"{url} (existing)"
        parsed = urlparse(url)
        exe = shutil.which("redis-server")
        if parsed.hostname not in LOOPBACK or exe is None:
            raise StackError(
                f"MATHAGENT_REDIS_URL={url}: nothing answers there. Start Redis (Debian: apt-get install "
                "redis-server) or point MATHAGENT_REDIS_URL at a running one"
            )
        data = self.s.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = str(parsed.port or 6379)
        child = self.spawn("redis", [exe, "--port", port, "--bind", "127.0.0.1", "--dir", str(data),
                                     "--appendonly", "yes", "--save", "", "--protected-mode", "yes"], "")
        _wait("redis", lambda: redis_answers(url, 0.5), child, 30)
        child.where = f"{url} (private, data in {data})"
        return child.where

    def sandbox(self) -> str:
        import asyncio

        from sandbox.client import SandboxClient

        sock = self.s.state_dir / SOCKET_NAME
        url = f"unix://{sock}"
        self.env["MATHAGENT_SANDBOX_URL"] = url
        # The sandbox supervisor holds no secrets: it gets a minimal environment, not ours.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MATHAGENT_STATE_DIR": str(self.s.state_dir)}
        if self.s.dev:
            env["MATHAGENT_DEV"] = "1"
        child = self.spawn("sandbox", [sys.executable, "-m", "sandbox", "serve", "--socket", str(sock)], url, env)

        def ready() -> bool:
            async def probe() -> bool:
                async with SandboxClient(url) as client:
                    await client.health()
                    return True

            try:
                return asyncio.run(probe())
            except Exception:
                return False

        _wait("sandbox", ready, child, self.s.start_timeout_s)
        return url

    def gateway(self) -> str:
        import httpx

        token = self.s.admin_token.get_secret_value()
        if not token:
            token = self._stored_token()
        self.env["MATHAGENT_ADMIN_TOKEN"] = token
        url = f"http://{self.s.host}:{self.s.port}"
        child = self.spawn("gateway", [sys.executable, "-m", "api", "serve"], url)

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("gateway", ready, child, self.s.start_timeout_s)
        return url

    def trainer(self) -> str:
        """The arq worker that runs retrain jobs; healthy once it wrote arq's health-check key."""
        import redis

        key = self.s.health_check_key
        client = redis.Redis.from_url(self.s.redis_url, socket_timeout=2)
        client.delete(key)  # a stale key from an earlier worker must not count
        # Deploys go through the gateway's hot swap (the admin token is already in self.env).
        env = {**self.env, "MATHAGENT_GATEWAY_URL": f"http://{self.s.host}:{self.s.port}"}
        child = self.spawn("trainer", [sys.executable, "-m", "trainer", "worker"], "", env)
        try:
            _wait("trainer worker", lambda: bool(client.exists(key)), child, self.s.start_timeout_s)
        finally:
            client.close()
        child.where = f"arq worker on {self.s.redis_url} (queue {self.s.queue_name})"
        return child.where

    def _stored_token(self) -> str:
        path = self.s.state_dir / "admin_token"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_text().strip()

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)  # the group: grandchildren too
            child.proc.wait()

    def run(self) -> int:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("model", self.model), ("redis", self.redis), ("sandbox", self.sandbox), ("gateway", self.gateway),
            ("trainer", self.trainer),
        ]
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
            raise KeyboardInterrupt

        # Both explicitly: a shell that starts `up` in the background sets SIGINT to "ignore".
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        table = Table(title="mathagent is up", show_header=True)
        table.add_column("component")
        table.add_column("where")
        try:
            for name, start in steps:
                with console.status(f"starting {name}..."):
                    table.add_row(name, start())
            table.add_row("chat page", f"http://{self.s.host}:{self.s.port}/")
            table.add_row("admin token", str(self.s.state_dir / "admin_token") if not self.s.admin_token.get_secret_value() else "MATHAGENT_ADMIN_TOKEN")
            table.add_row("logs", str(self.logs))
            console.print(table)
            console.print("Press Ctrl-C to stop everything.")
            while True:
                for child in self.children:
                    if child.proc.poll() is not None:
                        console.print(f"[red]{child.name} exited with status {child.proc.returncode}; stopping (see {child.log})")
                        return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping...")
            return 0
        except (StackError, ModelSpecError) as exc:
            console.print(f"[red]mathagent up: {exc}")
            return 1
        finally:
            self.stop()
            console.print(f"stopped {len(self.children)} process(es).")
