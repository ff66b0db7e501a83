"""Prometheus metrics of the gateway (prometheus-client, one registry per app).

Each app owns its registry, so several apps in one process (tests) never collide. Request
metrics are labelled by the route *template* (``/v1/trajectories/{trajectory_id}``), never by
the raw path, so label cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.trajectory import SegmentKind, Trajectory


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mathagent_http_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "mathagent_http_request_seconds",
            "HTTP request latency by route (streams: until the last byte)",
            ["route", "method"],
            buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.episodes = Counter(
            "mathagent_episodes", "finished agent episodes by finish reason", ["finish_reason"], registry=r
        )
        self.episodes_cancelled = Counter(
            "mathagent_solves_cancelled", "solves cancelled because the client went away", registry=r
        )
        self.sandbox_calls = Counter(
            "mathagent_sandbox_calls", "sandbox executions by result status", ["status"], registry=r
        )
        self.tokens = Counter("mathagent_tokens_generated", "tokens sampled by the model", registry=r)
        self.active_version = Gauge(
            "mathagent_active_model_version", "1 for the model version now serving", ["version"], registry=r
        )
        self.in_flight = Gauge("mathagent_solves_in_flight", "solves running now", registry=r)
        self.swap_phase = Histogram(
            "mathagent_swap_phase_seconds", "hot swap phases (prepare, commit, drain, retire; load, verify in place)",
            ["phase"], buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r,
        )
        self.swaps = Counter("mathagent_swaps", "deploys and rollbacks by outcome", ["kind", "outcome"], registry=r)
        self.pinned = Gauge("mathagent_solves_pinned", "solves in flight by the model version they are pinned to",
                            ["version"], registry=r)
        self.resident = Gauge("mathagent_model_versions_resident", "model versions loaded in the engine", registry=r)

    def set_version(self, version: str) -> None:
        self.active_version.clear()
        self.active_version.labels(version=version).set(1)

    def record_trajectory(self, traj: Trajectory) -> None:
        self.episodes.labels(finish_reason=str(traj.finish_reason or "unknown")).inc()
        for call in traj.calls:
            self.sandbox_calls.labels(status=str(call.result.status)).inc()
        self.tokens.inc(sum(len(s.token_ids) for s in traj.segments if s.kind is SegmentKind.model))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled ``scope`` (the router records it in the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware (streams pass through untouched): counts and times every request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "GET")
            route = route_template(scope)
            self.metrics.requests.labels(route=route, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=route, method=method).observe(time.perf_counter() - t0)
