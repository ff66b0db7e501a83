"""The gateway's configuration: one pydantic-settings object, validated at start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

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
    idempotency_ttl_s: int = Field(86400, ge=60, description="how long a finished solve answers repeats of its Idempotency-Key")

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
