"""The gateway's configuration: one pydantic-settings object, validated at start."""

from __future__ import annotations

from pathlib import Path

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
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for trajectories, feedback, jobs")
    sandbox_url: str = Field("", description="sandbox service: unix:///path.sock or http://127.0.0.1:PORT (default: unix socket in the state dir)")
    host: str = Field("127.0.0.1", description="gateway bind address")
    port: int = Field(8000, ge=1, le=65535, description="gateway port")
    admin_token: SecretStr = Field(SecretStr(""), description="bearer token for /admin routes (required outside dev)")

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
        return self
