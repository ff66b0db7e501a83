"""Deploying a published version: ask the gateway (``POST <gateway>/admin/deploy``), which loads
it beside the active one, verifies it on its golden prompts and switches; or, with no gateway
configured, make it active in the registry directly (a gateway started later serves the
active version)."""

from __future__ import annotations

from pydantic import BaseModel

from trainer.registry import Registry

DEPLOY_TIMEOUT_S = 900.0
RETRIES = 5


class DeployError(RuntimeError):
    """The gateway refused or failed the deploy (the message has its status and answer)."""


class DeployResult(BaseModel):
    version: str
    via: str  # "gateway" or "registry"
    detail: str = ""


async def deploy(version: str, *, registry: Registry, gateway_url: str = "", admin_token: str = "",
                 timeout_s: float = DEPLOY_TIMEOUT_S, retry_s: float = 5.0,
                 previous_if_none: str | None = None) -> DeployResult:
    """Deploy ``version`` (idempotent: deploying the active version again changes nothing).

    Without a gateway and with no version active yet, ``previous_if_none`` (the imported base
    model) is made active first, so the pointer's ``previous`` lets a rollback return to it."""
    registry.verify(version)
    if not gateway_url:
        if registry.active() is None and previous_if_none and previous_if_none != version:
            registry.activate(previous_if_none)
        pointer = registry.activate(version)
        return DeployResult(version=version, via="registry", detail=f"active {pointer.active}, previous {pointer.previous}")
    import asyncio

    import httpx

    url = gateway_url.rstrip("/") + "/admin/deploy"
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    problem = ""
    for attempt in range(1, RETRIES + 1):  # 409 (a swap in progress) and 5xx are retried; 4xx are not
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                resp = await client.post(url, json={"version": version}, headers=headers)
        except httpx.HTTPError as exc:
            problem = f"gateway {url} unreachable ({type(exc).__name__}: {exc})"
        else:
            if resp.status_code < 300:
                return DeployResult(version=version, via="gateway", detail=resp.text[:500])
            problem = f"gateway answered {resp.status_code}: {resp.text[:500]}"
            if resp.status_code not in (409, 502, 503, 504):
                break
        if attempt < RETRIES:
            await asyncio.sleep(retry_s * attempt)
    raise DeployError(f"deploy {version}: {problem}")
