"""The gateway's configuration: one pydantic-settings object, validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that mean "nobody set a real token": refused outside dev mode.
PLACEHOLDER_TOKENS = frozenset({"", "changeme", "change-me", "admin", "token", "secret", "placeholder", "xxx"})


class GatewaySettings(BaseSettings):
    """Settings of the API gateway (``python -m api serve``)."""

    model_config = SettingsConfigDict(env_prefix="MATHAGENT_", env_file=".env", extra="ignore")

    dev: bool = Field(False, description="development mode: relaxes the admin-token and sandbox strictness checks")
    state_dir: Path = Field(Path("~/.cache/mathagent"), description="model cache, spool, private redis data")
    model: str = Field("smollm2", description="model spec: 'smollm2', a checkpoint directory or a hub id")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="inference engine: in-process transformers (CPU) or a vLLM server"
    )
    vllm_url: str = Field("http://127.0.0.1:8001", description="the vLLM server's base URL (engine=vllm)")
    vllm_model: str = Field(
        "", description="the model name vLLM serves (its --served-model-name; default: its --model path = the resolved MATHAGENT_MODEL)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads of the in-process engine (None: torch's default, one per core; "
        "measured on 2 cores: batch-1 decoding as fast as 1 thread, 8 concurrent requests 1.6x faster)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for trajectories, feedback, jobs")
    redis_prefix: str = Field("mathagent", description="key prefix: <prefix>:trajectories is the stream")
    sandbox_url: str = Field("", description="sandbox service: unix:///path.sock or http://127.0.0.1:PORT (default: unix socket in the state dir)")
    host: str = Field("127.0.0.1", description="gateway bind address")
    port: int = Field(8000, ge=1, le=65535, description="gateway port")
    admin_token: SecretStr = Field(SecretStr(""), description="bearer token for /admin routes (required outside dev)")
    registry_dir: Path | None = Field(None, description="the model version registry (default <state_dir>/registry); "
                                      "the gateway serves its active version and swaps between its versions")
    queue_name: str = Field("arq:queue", description="the trainer's arq queue (POST /admin/retrain enqueues there)")
    public_model_id: str = Field(
        "mathagent", min_length=1, description="the model id /v1/models lists: stable across weight swaps"
    )

    # --- what one solve may ask for (requests beyond these get a clear 422)
    max_body_bytes: int = Field(65536, ge=1024, description="largest accepted request body")
    max_problem_chars: int = Field(8000, ge=16, description="longest accepted problem / chat message")
    max_samples: int = Field(8, ge=1, le=64, description="samples (majority vote) one request may ask for")
    max_turns_limit: int = Field(12, ge=0, le=64, description="tool calls per episode one request may ask for")
    max_revisions: int = Field(2, ge=0, le=8, description="self-revisions one request may ask for")
    max_turns: int = Field(6, ge=0, le=64, description="tool calls per episode")
    max_new_tokens: int = Field(384, ge=1, description="per model turn")
    max_total_tokens: int = Field(2048, ge=16, description="whole episode: prompt + model + observations")
    sandbox_timeout_s: float = Field(10.0, gt=0)
    rate_limit_per_minute: int = Field(
        60, ge=0, description="solve/chat requests per minute per API key (or client address); 0 = unlimited"
    )
    idempotency_ttl_s: int = Field(86400, ge=60, description="how long a finished solve answers repeats of its Idempotency-Key")

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        self.state_dir = self.state_dir.expanduser()
        if not self.sandbox_url:
            self.sandbox_url = f"unix://{self.state_dir / 'sandbox.sock'}"
        token = self.admin_token.get_secret_value()
        if not self.dev and (token.strip().lower() in PLACEHOLDER_TOKENS or len(token) < 16):
            raise ValueError(
                "MATHAGENT_ADMIN_TOKEN is missing or a placeholder: set a random token of at least 16 "
                "characters (e.g. `openssl rand -hex 32`), or MATHAGENT_DEV=1 for development"
            )
        if self.max_turns > self.max_turns_limit:
            raise ValueError("MATHAGENT_MAX_TURNS must not exceed MATHAGENT_MAX_TURNS_LIMIT")
        return self

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def registry_path(self) -> Path:
        """The model version registry, shared with the trainer (default ``<state_dir>/registry``)."""
        return (self.registry_dir or self.state_dir / "registry").expanduser()
