"""Who is calling: the identity rate limits, idempotency and feedback are keyed on.

A caller is one of, checked in this order:

- ``admin``: ``Authorization: Bearer <MATHAGENT_ADMIN_TOKEN>`` (compared in constant time);
- ``key:<id>``: a bearer that is one of the configured API keys (MATHAGENT_API_KEYS holds their
  sha256 digests, so the keys themselves are never stored); ``<id>`` is a prefix of the digest;
- ``addr:<id>``: everyone else, by network address: the TCP peer, or, when the peer is one of
  MATHAGENT_TRUSTED_PROXIES, the right-most ``X-Forwarded-For`` entry that is not itself a
  trusted proxy (the entries left of it are whatever the client wrote, so they never count).

None of these can be minted at will: a bearer that is not a configured key is refused (401)
when keys are configured and ignored otherwise, so random ``Authorization`` values all land on
the sender's address. The address id is a digest: logs and Redis keys never hold addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection

from api.settings import GatewaySettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CallerKind = Literal["admin", "key", "addr"]


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    id: str = ""

    @property
    def key(self) -> str:
        """The stable, opaque name of this caller (rate-limit and feedback keys)."""
        return self.kind if self.kind == "admin" else f"{self.kind}:{self.id}"


class BadCredential(Exception):
    """No usable credential: a bearer that is neither the admin token nor a configured API key
    (``invalid_api_key``), or none where one is required (``missing_api_key``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bearer(conn: HTTPConnection) -> str | None:
    auth = conn.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def forwarded_client(peer: str, forwarded_for: str | None, proxies: tuple[Network, ...]) -> str:
    """The client address: ``peer``, or, when ``peer`` is a trusted proxy, the right-most
    X-Forwarded-For entry that is not one (a malformed entry stops the walk at the last good hop)."""

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in proxies)

    client = peer
    if not proxies or not trusted(peer) or not forwarded_for:
        return client
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client
        client = hop
        if not trusted(hop):
            return client
    return client


class Callers:
    """Identifies callers for one gateway (built once from its settings)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.admin_token = settings.admin_token.get_secret_value()
        self.key_digests = settings.api_key_digests
        self.require_key = settings.require_api_key
        self.proxies = settings.proxy_networks

    @property
    def keys_configured(self) -> bool:
        return bool(self.key_digests)

    def is_admin(self, conn: HTTPConnection) -> bool:
        token = bearer(conn)
        return bool(self.admin_token and token and hmac.compare_digest(token.encode(), self.admin_token.encode()))

    def address(self, conn: HTTPConnection) -> Caller:
        peer = conn.client.host if conn.client else "unknown"
        client = forwarded_client(peer, conn.headers.get("x-forwarded-for"), self.proxies)
        return Caller("addr", _digest("addr:" + client)[:24])

    def identify(self, conn: HTTPConnection) -> Caller:
        """The caller of ``conn``; :class:`BadCredential` for a bearer that is not a credential here
        (only when API keys are configured: without keys, a bearer means nothing and is ignored)."""
        token = bearer(conn)
        if token is not None:
            if self.is_admin(conn):
                return Caller("admin")
            if self.keys_configured:
                digest = _digest(token)
                if digest in self.key_digests:
                    return Caller("key", digest[:16])
                raise BadCredential("invalid API key", "invalid_api_key")
        if self.require_key:
            raise BadCredential("an API key is required: send `Authorization: Bearer <key>`", "missing_api_key")
        return self.address(conn)
