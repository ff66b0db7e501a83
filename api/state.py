"""What the gateway builds once at start (in the lifespan) and hands to routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from api.settings import GatewaySettings


@dataclass
class AppState:
    settings: GatewaySettings
    redis: aioredis.Redis
    sandbox: Any = None  # sandbox.client.SandboxClient
    engine: Any = None  # agent.engines.base.Engine
    extra: dict[str, Any] = field(default_factory=dict)
