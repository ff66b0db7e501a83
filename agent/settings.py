"""The settings every mathagent process shares: one pydantic-settings object, env prefix ``MATHAGENT_``.

:class:`AgentSettings` holds what any process that runs the agent needs (the model and its
engine, the sandbox, the trajectory log, the limits of an episode). The gateway's and the
trainer's settings extend it, so one variable means the same thing in every process and each
field is declared once. Validated at start: a bad value fails with one clear line before any
work begins (see ``agent.configuration.load``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.limits import (
    MAX_NEW_TOKENS,
    MAX_TOTAL_TOKENS,
    MAX_TURNS,
    OBSERVATION_MAX_CHARS,
    SANDBOX_TIMEOUT_S,
    MaxNewTokens,
    MaxTotalTokens,
    MaxTurns,
    ObservationMaxChars,
    SandboxTimeout,
)
from agent.modelstore import EMBEDDED_SPEC
from agent.trajlog import REDIS_PREFIX
from sandbox.settings import STATE_DIR, socket_url

if TYPE_CHECKING:
    from agent.solver import SolverSettings

EngineKind = Literal["transformers", "vllm"]


class AgentSettings(BaseSettings):
    """Settings of every process that runs the agent (the CLI, the gateway, the trainer)."""

    model_config = SettingsConfigDict(env_prefix="MATHAGENT_", env_file=".env", extra="ignore")

    dev: bool = Field(False, description="development mode: relaxes the admin-token and sandbox strictness checks")
    state_dir: Path = Field(STATE_DIR, description="model cache, logs, spool, private Redis data, sandbox socket")
    model: str = Field(EMBEDDED_SPEC, description="model spec: 'smollm2' (embedded), a checkpoint directory or a hub id")
    engine: EngineKind = Field(
        "transformers", description="inference engine: the in-process transformers engine (CPU) or a vLLM server"
    )
    vllm_url: str = Field("http://127.0.0.1:8001", description="the vLLM server's base URL (engine=vllm)")
    vllm_model: str = Field(
        "", description="the model name vLLM serves (its --served-model-name; default: the resolved MATHAGENT_MODEL path)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads of the in-process engine (default: torch's, one per core)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis: trajectories, feedback, jobs")
    redis_prefix: str = Field(REDIS_PREFIX, description="key prefix: <prefix>:trajectories is the stream")
    stream_maxlen: int | None = Field(None, description="approximate trimming of the stream; None keeps everything")
    sandbox_url: str = Field(
        "", description="sandbox service: unix:///path.sock or http://127.0.0.1:PORT (default: unix socket in the state dir)"
    )

    max_turns: MaxTurns = MAX_TURNS
    max_new_tokens: MaxNewTokens = MAX_NEW_TOKENS
    max_total_tokens: MaxTotalTokens = MAX_TOTAL_TOKENS
    sandbox_timeout_s: SandboxTimeout = SANDBOX_TIMEOUT_S
    observation_max_chars: ObservationMaxChars = OBSERVATION_MAX_CHARS

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @model_validator(mode="after")
    def _default_sandbox_url(self) -> AgentSettings:
        if not self.sandbox_url:
            self.sandbox_url = socket_url(self.state_dir)
        return self

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    def solver_settings(self) -> SolverSettings:
        """The solver's defaults as this process is configured."""
        from agent.solver import SolverSettings

        return SolverSettings(
            max_turns=self.max_turns,
            max_new_tokens=self.max_new_tokens,
            max_total_tokens=self.max_total_tokens,
            sandbox_timeout_s=self.sandbox_timeout_s,
            observation_max_chars=self.observation_max_chars,
        )
