"""The supervisor's side of the zygote: start it with an empty environment, ask it for workers,
receive their file descriptors and exit statuses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import protocol

log = logging.getLogger("sandbox.zygote")


class SandboxFailure(RuntimeError):
    """The executor itself failed (never the code's fault)."""


def host_pid(pidfd: int) -> int:
    """The pid, in this process's PID namespace, of the process behind ``pidfd`` (-1 when gone)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise SandboxFailure("no Pid in the pidfd's fdinfo (kernel too old)")


@dataclass
class Worker:
    slot: int
    pid: int  # as the supervisor (and /proc here) sees it
    pidfd: int
    sock: socket.socket
    out_fd: int
    err_fd: int
    exit: asyncio.Future[dict[str, Any]]
    applied: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    sched_ready_ns: int = 0  # its threads' on-CPU + run-queue time once idle in the pool (0: not measured)

    def kill(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def pause(self) -> None:
        """Stop every thread of the worker (a session between cells); SIGSTOP cannot be caught or ignored."""
        if not self.closed:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGSTOP)

    def resume(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGCONT)

    def close(self) -> None:
        if self.closed:
            return
        self.kill()
        self.closed = True
        loop = asyncio.get_running_loop()
        for fd in (self.out_fd, self.err_fd):
            loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.sock.close()


def clean_env() -> dict[str, str]:
    """The zygote's whole environment: nothing inherited, so no secret can reach a worker."""
    pkg_root = str(Path(__file__).resolve().parents[1])
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": pkg_root,
    }


class Zygote:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.applied: dict[str, Any] = {}
        self._seq = itertools.count()
        self._spawns: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]]] = {}
        self._exits: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._started: asyncio.Future[dict[str, Any]] | None = None
        self._dead_event = asyncio.Event()
        self.dead = False

    async def wait_dead(self) -> None:
        """Return once the zygote has died or was stopped."""
        await self._dead_event.wait()

    async def start(self, timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The configuration goes over the socket, not the command line, which every worker could read.
        parent.send(json.dumps(self.cfg).encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.zygote", str(child.fileno())],
            env=clean_env(),
            cwd="/",
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.close()
        parent.setblocking(False)
        self.sock = parent
        self._started = loop.create_future()
        loop.add_reader(parent.fileno(), self._on_readable)
        try:
            msg = await asyncio.wait_for(self._started, timeout)
        except (TimeoutError, SandboxFailure) as e:
            self.stop()
            raise SandboxFailure(f"zygote did not start: {e}") from e
        self.applied = msg.get("applied", {})

    def _on_readable(self) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                raw, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
            except BlockingIOError:
                return
            except OSError:
                raw, fds = b"", []
            if not raw:
                self._died("zygote exited")
                return
            msg = json.loads(raw)
            op = msg.get("op")
            if op == "started" and self._started and not self._started.done():
                self._started.set_result(msg)
            elif op == "fatal":
                if self._started and not self._started.done():
                    self._started.set_exception(SandboxFailure(msg.get("error", "fatal")))
            elif op == "spawned":
                self._exits.setdefault(msg["pid"], loop.create_future())
                fut = self._spawns.pop(msg.get("seq"), None)
                if fut is not None and not fut.done():
                    fut.set_result((msg, list(fds)))
                else:
                    for fd in fds:
                        os.close(fd)
            elif op == "exit":
                ex = self._exits.pop(msg["pid"], None) or loop.create_future()
                if not ex.done():
                    ex.set_result(msg)

    def _died(self, why: str) -> None:
        if self.dead:
            return
        self.dead = True
        self._dead_event.set()
        log.error("sandbox zygote died: %s", why)
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        err = SandboxFailure(why)
        futs: list[asyncio.Future[Any]] = [*self._spawns.values(), *self._exits.values()]
        for fut in futs:
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved
        if self._started and not self._started.done():
            self._started.set_exception(err)
        self._spawns.clear()
        self._exits.clear()

    async def spawn(self, slot: int, persistent: bool, timeout: float = 30.0) -> Worker:
        if self.dead or self.sock is None:
            raise SandboxFailure("zygote is not running")
        loop = asyncio.get_running_loop()
        seq = next(self._seq)
        fut: asyncio.Future[tuple[dict[str, Any], list[int]]] = loop.create_future()
        self._spawns[seq] = fut
        self.sock.send(json.dumps({"op": "spawn", "slot": slot, "persistent": persistent, "seq": seq}).encode())
        msg, fds = await asyncio.wait_for(fut, timeout)
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            raise SandboxFailure("zygote sent a malformed spawn reply")
        cmd_fd, out_fd, err_fd, pidfd = fds
        sock = socket.socket(fileno=cmd_fd)
        sock.setblocking(False)
        os.set_blocking(out_fd, False)
        os.set_blocking(err_fd, False)
        # Exits are reported under the pid the zygote sees (its own PID namespace); /proc here needs ours.
        exit_fut = self._exits.setdefault(msg["pid"], loop.create_future())
        try:
            pid = host_pid(pidfd)
        except (OSError, ValueError, SandboxFailure):
            pid = -1
        w = Worker(slot, pid, pidfd, sock, out_fd, err_fd, exit_fut)
        try:
            ready = await asyncio.wait_for(protocol.arecv(loop, sock), timeout)
        except (OSError, EOFError, ValueError, RecursionError, TimeoutError) as e:
            w.close()
            raise SandboxFailure(f"worker setup failed: {type(e).__name__}") from e
        if ready.get("op") != "ready" or pid <= 0:
            w.close()
            raise SandboxFailure(f"worker setup failed: {str(ready.get('error', ready))[-800:]}")
        applied = ready.get("applied")
        w.applied = applied if isinstance(applied, dict) else {}
        return w

    def stop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self.dead = True
        with contextlib.suppress(RuntimeError):  # no loop when called from a thread
            asyncio.get_running_loop().call_soon(self._dead_event.set)
        if self.proc is not None:
            deadline = time.monotonic() + 3
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
