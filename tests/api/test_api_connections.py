"""Connections that misbehave: bodies that trickle in (or never finish) are answered 408 and
closed, and a client that walks away from a stream leaves no task behind in the server."""

from __future__ import annotations

import gc
import select
import socket
import time
import uuid
from typing import Any

import httpx
import pytest
from support.gateway_stack import RunningApp, Stack
from support.sse_client import events

SLOW_CLIENTS = 20


@pytest.fixture(scope="module")
def timed_app(stack: Stack, tokenizer: Any) -> RunningApp:
    from agent.engines.transformers_engine import TransformersEngine
    from agent.modelstore import tiny_random_model

    engine = TransformersEngine(tiny_random_model(tokenizer), tokenizer, "tiny-timed-v1")
    return stack.serve(engine, max_new_tokens=24, max_total_tokens=1024, body_timeout_s=1.0,
                       rate_limit_per_minute=0, redis_prefix=f"conn-{uuid.uuid4().hex[:8]}")


def test_slow_bodies_are_answered_408_and_dropped(timed_app: RunningApp) -> None:
    host, port = timed_app.url.removeprefix("http://").split(":")
    head = (f"POST /v1/solve HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 4000\r\n\r\n").encode()
    socks = []
    for _ in range(SLOW_CLIENTS):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(head + b'{"problem": "')
        socks.append(s)
    replies = {s: b"" for s in socks}
    closed: dict[socket.socket, float] = {}
    t0 = time.monotonic()
    try:
        # keep trickling one byte per client every 0.2 s, as a slowloris does, until the server hangs up
        while len(closed) < len(socks) and time.monotonic() - t0 < 60:
            for s in socks:
                if s not in closed:
                    try:
                        s.send(b"x")
                    except OSError:
                        pass
            readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.2)
            for s in readable:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                if chunk:
                    replies[s] += chunk
                else:
                    closed[s] = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow clients still connected after 60 s"
    for s in socks:
        status, _, rest = replies[s].partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 408"), replies[s][:200]
        assert b'"code":"body_timeout"' in rest.replace(b" ", b"")
    # the server is fine: a normal request right after
    with timed_app.client() as c:
        assert c.get("/healthz").status_code == 200


def test_a_body_that_arrives_in_time_is_served(timed_app: RunningApp) -> None:
    def chunks() -> Any:  # sent in pieces, well within the deadline
        yield b'{"problem": "'
        time.sleep(0.1)
        yield b'What is 1+1?", "max_turns": 0}'

    with timed_app.client() as c:
        r = c.post("/v1/solve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_abandoned_streams_leave_no_pending_task(stack: Stack, timed_app: RunningApp) -> None:
    loop = stack.loop.loop
    problems: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: problems.append(f"{context.get('message')} {context.get('task')!r}"[:600]))
    solver, metrics = timed_app.state.solver, timed_app.state.metrics
    saved = solver.settings
    solver.settings = saved.model_copy(update={"max_new_tokens": 4000, "max_total_tokens": 5000})
    try:
        for path, body in (("/v1/solve", {"problem": "Talk forever.", "stream": True, "samples": 2,
                                          "temperature": 1.0}),
                           ("/v1/chat/completions", {"model": "mathagent", "stream": True,
                                                     "messages": [{"role": "user", "content": "Talk forever."}]})):
            for _ in range(3):
                with httpx.Client(base_url=timed_app.url, timeout=60) as c, c.stream("POST", path, json=body) as r:
                    assert r.status_code == 200
                    for _name, _ in events(r):
                        break  # the client goes away mid-generation
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and metrics.in_flight._value.get():
            time.sleep(0.05)
        assert metrics.in_flight._value.get() == 0
        time.sleep(0.5)
        stack.loop.run(_collect())  # finalizers run in the loop's thread
        gc.collect()
        time.sleep(0.2)
    finally:
        solver.settings = saved
        loop.set_exception_handler(previous)
    assert not [p for p in problems if "destroyed but it is pending" in p], problems


async def _collect() -> None:
    gc.collect()
