"""Idempotency keys for solve requests: a retried request gets the first answer, not a new solve.

A client (or the ``openai`` SDK with ``extra_headers={"Idempotency-Key": ...}``) that re-sends
a request after a timeout must not start a second solve. The first request claims the key in
Redis (``SET NX``) with a fingerprint of its body; it stores the finished response under the
key for ``ttl``. A repeat with the same body waits for the first one and gets its response; a
repeat with a different body is refused (422); a failed solve releases the key so a retry can
run. Keys are scoped per route and per caller, so two callers never see each other's answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from api.errors import ApiError

log = logging.getLogger("mathagent.api")

PENDING = "pending"


class IdempotencyStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: int, *, wait_s: float = 600.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.wait_s = wait_s

    def _key(self, route: str, caller: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}:idempotency:{route}:{caller}:{digest}"

    @staticmethod
    def fingerprint(body: Any) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    async def claim(self, route: str, caller: str, key: str, fingerprint: str) -> tuple[str | None, dict[str, Any] | None]:
        """Claim ``key``: (redis key, None) when this request should run, (None, stored response)
        when a previous request with the key already answered. (None, None): store unavailable."""
        if len(key) > 255 or not key.isprintable():
            raise ApiError(422, "Idempotency-Key must be printable and at most 255 characters", param="Idempotency-Key")
        rkey = self._key(route, caller, key)
        record = json.dumps({"state": PENDING, "fingerprint": fingerprint})
        try:
            if await self.redis.set(rkey, record, nx=True, ex=self.ttl_s):
                return rkey, None
            deadline = asyncio.get_running_loop().time() + self.wait_s
            while True:
                raw = await self.redis.get(rkey)
                if raw is None:  # the first attempt failed and released the key: run this one
                    if await self.redis.set(rkey, record, nx=True, ex=self.ttl_s):
                        return rkey, None
                    continue
                stored = json.loads(raw)
                if stored.get("fingerprint") != fingerprint:
                    raise ApiError(
                        422, "Idempotency-Key was already used with a different request body",
                        code="idempotency_key_reused", param="Idempotency-Key",
                    )
                if stored.get("state") != PENDING:
                    return None, dict(stored["response"])
                if asyncio.get_running_loop().time() > deadline:
                    raise ApiError(409, "a request with this Idempotency-Key is still running", code="idempotency_in_progress")
                await asyncio.sleep(0.25)
        except ApiError:
            raise
        except Exception as exc:  # Redis down: run without the guarantee rather than refuse
            log.warning("idempotency store unavailable (%s); request runs unguarded", type(exc).__name__)
            return None, None

    async def finish(self, rkey: str, fingerprint: str, response: dict[str, Any]) -> None:
        try:
            await self.redis.set(
                rkey, json.dumps({"state": "done", "fingerprint": fingerprint, "response": response}), ex=self.ttl_s
            )
        except Exception as exc:
            log.warning("could not store idempotent response (%s)", type(exc).__name__)

    async def release(self, rkey: str) -> None:
        try:
            await self.redis.delete(rkey)
        except Exception as exc:
            log.warning("could not release idempotency key (%s)", type(exc).__name__)

    async def run_once(
        self, route: str, caller: str, key: str, body: Any, work: Callable[[], Awaitable[dict[str, Any]]]
    ) -> tuple[dict[str, Any], bool]:
        """Run ``work`` at most once per key: (its response, False), or (the stored response,
        True) for a repeat. A failing ``work`` releases the key so a retry can run."""
        fingerprint = self.fingerprint(body)
        rkey, stored = await self.claim(route, caller, key, fingerprint)
        if stored is not None:
            return stored, True
        try:
            payload = await work()
        except BaseException:
            if rkey is not None:
                await self.release(rkey)
            raise
        if rkey is not None:
            await self.finish(rkey, fingerprint, payload)
        return payload, False
