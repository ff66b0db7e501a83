"""The gateway's outer guards, installed around every route: the Host allow-list, then the body
size and read-time limits (:mod:`api.limits`).

Host allow-list: a page on another site can make a browser resolve its own name to 127.0.0.1
(DNS rebinding) and read the gateway's unauthenticated routes; the browser still sends that
other name as ``Host``, so answering only the names in MATHAGENT_TRUSTED_HOSTS (and the bind
address) closes the hole. Written here rather than using Starlette's ``TrustedHostMiddleware``
because that one answers a plain-text 400 outside the gateway's one JSON error shape.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.limits import BodyLimitMiddleware, send_error
from api.settings import GatewaySettings


def host_name(header: str | None) -> str | None:
    """The name of a Host header without its port (``[::1]:8000`` -> ``::1``); None if malformed."""
    if not header:
        return None
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            return None
        return value[1:end]
    name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if port and not port.isdigit():
        return None
    return name or None


class TrustedHostMiddleware:
    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        for pattern in allowed_hosts:
            if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
                raise ValueError(f"MATHAGENT_TRUSTED_HOSTS: {pattern!r}: a wildcard must look like *.example.com")
        self.app = app
        self.allowed = [p.lower().strip("[]") for p in allowed_hosts]
        self.any = "*" in self.allowed

    def allows(self, host: str | None) -> bool:
        if self.any:
            return True
        if host is None:
            return False
        return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in self.allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(host_name(Headers(scope=scope).get("host"))):
            await self.app(scope, receive, send)
            return
        await send_error(send, 400, "this Host is not served here (MATHAGENT_TRUSTED_HOSTS)", "untrusted_host")


def install(app: FastAPI, settings: GatewaySettings) -> None:
    """Add the guards (call before the metrics middleware, which stays outermost)."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
