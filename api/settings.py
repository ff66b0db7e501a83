"""The gateway's configuration: one pydantic-settings object, validated at start."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from trainer.settings import ServiceSettings

if TYPE_CHECKING:
    from agent.solver import SolverSettings

PUBLIC_MODEL_ID = "mathagent"  # the default model id of the OpenAI-compatible routes

# Values that mean "nobody set a real token": refused outside dev mode.
PLACEHOLDER_TOKENS = frozenset({"", "changeme", "change-me", "admin", "token", "secret", "placeholder", "xxx"})


class GatewaySettings(ServiceSettings):
    """Settings of the API gateway (``python -m api serve``).

    The shared settings (model, engine, sandbox, Redis, registry, queue, admin token, episode
    limits) plus the gateway's own: its address and what one request may ask for."""

    host: str = Field("127.0.0.1", description="gateway bind address")
    port: int = Field(8000, ge=1, le=65535, description="gateway port")
    public_model_id: str = Field(
        PUBLIC_MODEL_ID, min_length=1, description="the model id /v1/models lists: stable across weight swaps"
    )

    # --- what one solve may ask for (requests beyond these get a clear 422)
    max_body_bytes: int = Field(65536, ge=1024, description="largest accepted request body")
    max_problem_chars: int = Field(8000, ge=16, description="longest accepted problem / chat message")
    max_samples: int = Field(8, ge=1, le=64, description="samples (majority vote) one request may ask for")
    max_turns_limit: int = Field(12, ge=0, le=64, description="tool calls per episode one request may ask for")
    max_revisions: int = Field(2, ge=0, le=8, description="self-revisions one request may ask for")
    rate_limit_per_minute: int = Field(
        60, ge=0, description="solve/chat requests per minute per API key (or client address); 0 = unlimited"
    )
    feedback_rate_limit_per_minute: int = Field(
        20, ge=0, description="feedback posts per minute per API key (or client address); 0 = unlimited"
    )
    feedback_per_trajectory: int = Field(
        16, ge=1, le=1000, description="distinct callers that may rate one trajectory (each caller's latest rating counts)"
    )
    idempotency_ttl_s: int = Field(86400, ge=60, description="how long a finished solve answers repeats of its Idempotency-Key")

    # --- who may call, and from where
    api_keys: str = Field(
        "", description="API keys of the public routes, comma-separated sha256 hex digests of the keys (never the "
        "keys themselves; `python -m api new-key` makes one); a caller sends `Authorization: Bearer <key>`")
    api_keys_file: Path | None = Field(
        None, description="a file of API key sha256 digests, one per line (# comments), read at start; adds to "
        "MATHAGENT_API_KEYS")
    require_api_key: bool = Field(
        False, description="refuse public requests without a valid API key (otherwise keyless callers are limited "
        "by address)")
    trusted_proxies: str = Field(
        "", description="comma-separated addresses or CIDR networks of reverse proxies whose X-Forwarded-For is "
        "believed; empty: the peer address is the client")
    trusted_hosts: str = Field(
        "localhost,127.0.0.1,::1", description="comma-separated Host header names the gateway answers (besides "
        "MATHAGENT_HOST); *.example.com matches subdomains; * = any (DNS rebinding protection off)")
    body_timeout_s: float = Field(
        10.0, gt=0, le=600, allow_inf_nan=False, description="a request body must arrive within this many seconds "
        "(slower connections get 408 and are closed)")

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, v: str) -> str:
        parse_digests(v, "MATHAGENT_API_KEYS")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: str) -> str:
        proxy_networks(v)
        return v

    @property
    def api_key_digests(self) -> frozenset[str]:
        """The sha256 hex digests of every configured API key (the setting and the file)."""
        digests = set(parse_digests(self.api_keys, "MATHAGENT_API_KEYS"))
        if self.api_keys_file is not None:
            text = self.api_keys_file.expanduser().read_text(encoding="utf-8")
            lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
            digests |= set(parse_digests(",".join(line for line in lines if line), str(self.api_keys_file)))
        return frozenset(digests)

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return proxy_networks(self.trusted_proxies)

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """Host names the gateway answers: MATHAGENT_TRUSTED_HOSTS plus its own bind address."""
        names = [h.strip().lower() for h in self.trusted_hosts.split(",") if h.strip()]
        return tuple(dict.fromkeys([*names, self.host.strip().lower()]))

    @model_validator(mode="after")
    def _check_keys_file(self) -> GatewaySettings:
        if self.api_keys_file is not None:
            try:
                digests = self.api_key_digests
            except OSError as exc:
                raise ValueError(f"MATHAGENT_API_KEYS_FILE: cannot read {self.api_keys_file} ({exc.strerror})") from None
            if not digests:
                raise ValueError(f"MATHAGENT_API_KEYS_FILE: {self.api_keys_file} lists no key digests")
        if self.require_api_key and not self.api_keys.strip() and self.api_keys_file is None:
            raise ValueError("MATHAGENT_REQUIRE_API_KEY needs MATHAGENT_API_KEYS or MATHAGENT_API_KEYS_FILE")
        return self

    @model_validator(mode="after")
    def _check_limits(self) -> GatewaySettings:
        if self.max_turns > self.max_turns_limit:
            raise ValueError("MATHAGENT_MAX_TURNS must not exceed MATHAGENT_MAX_TURNS_LIMIT")
        return self

    @model_validator(mode="after")
    def _require_admin_token(self) -> GatewaySettings:
        token = self.admin_token.get_secret_value()
        if not self.dev and (token.strip().lower() in PLACEHOLDER_TOKENS or len(token) < 16):
            raise ValueError(
                "MATHAGENT_ADMIN_TOKEN is missing or a placeholder: set a random token of at least 16 "
                "characters (e.g. `openssl rand -hex 32`), or MATHAGENT_DEV=1 for development"
            )
        return self

    def solver_settings(self) -> SolverSettings:
        """The shared solver defaults plus what one request may ask for at most."""
        return super().solver_settings().model_copy(
            update={"max_samples": self.max_samples, "max_revisions": self.max_revisions})


_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def parse_digests(text: str, where: str) -> list[str]:
    """Comma-separated sha256 hex digests; a clear error naming ``where`` for anything else."""
    out = []
    for i, item in enumerate(t.strip().lower() for t in text.split(",")):
        if not item:
            continue
        if not _DIGEST.match(item):  # the value is not echoed: it may be a key pasted by mistake
            raise ValueError(f"{where}: entry {i + 1} is not a sha256 hex digest (64 hex characters): store the "
                             "digest of each key, never the key (`python -m api new-key` prints both)")
        out.append(item)
    return out


def proxy_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise ValueError(f"MATHAGENT_TRUSTED_PROXIES: {exc}") from None
