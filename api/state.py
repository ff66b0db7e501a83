"""What the gateway builds once at start (in the lifespan) and hands to routes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from api.callers import Callers
from api.feedback import FeedbackTokens
from api.idempotency import IdempotencyStore
from api.limits import RateLimiter
from api.metrics import Metrics
from api.settings import GatewaySettings

if TYPE_CHECKING:
    from agent.engines.base import VersionedEngine
    from agent.solver import Solver
    from agent.trajlog import TrajectoryLog
    from api.swap import SwapManager
    from sandbox.client import SandboxClient


@dataclass
class AppState:
    settings: GatewaySettings
    redis: aioredis.Redis
    sandbox: SandboxClient | None = None
    engine: VersionedEngine | None = None
    trajectory_log: TrajectoryLog | None = None
    solver: Solver | None = None  # unpinned: solves go through solving.pinned_solver
    swap: SwapManager | None = None  # hot swap, version leases
    metrics: Metrics = field(default_factory=Metrics)
    limiter: RateLimiter | None = None
    idempotency: IdempotencyStore | None = None
    callers: Callers | None = None  # who is calling (rate limits, feedback trust)
    feedback_tokens: FeedbackTokens | None = None  # proof of having solved a trajectory
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        if self.limiter is None:
            self.limiter = RateLimiter(self.redis, s.redis_prefix, s.rate_limit_per_minute)
        if self.idempotency is None:
            self.idempotency = IdempotencyStore(self.redis, s.redis_prefix, s.idempotency_ttl_s)
        if self.callers is None:
            self.callers = Callers(s)
        if self.feedback_tokens is None:
            self.feedback_tokens = FeedbackTokens(s)

    @property
    def model_version(self) -> str | None:
        return str(self.engine.model_version) if self.engine is not None else None
