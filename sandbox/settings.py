"""Settings of the sandbox service (env prefix ``MATHAGENT_SANDBOX_``), validated at start.

Also the two path facts every mathagent process shares, stated here because the sandbox is the
lowest layer that needs them: the default state directory and where in it the sandbox socket is.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

STATE_DIR = Path("~/.cache/mathagent")
"""The default of ``MATHAGENT_STATE_DIR``: model cache, logs, spool, private Redis data, the socket."""
SOCKET_NAME = "sandbox.sock"


def socket_url(state_dir: Path) -> str:
    """The default sandbox address of a state directory: ``unix://<state_dir>/sandbox.sock``."""
    return f"unix://{state_dir.expanduser() / SOCKET_NAME}"


class SandboxSettings(BaseSettings):
    """Settings of the sandbox service (``python -m sandbox serve``)."""

    model_config = SettingsConfigDict(env_prefix="MATHAGENT_SANDBOX_", extra="ignore", populate_by_name=True)

    url: str = Field("", description="unix:///abs/path.sock or http://127.0.0.1:PORT; default unix://<state_dir>/sandbox.sock")
    state_dir: Path = Field(STATE_DIR, validation_alias=AliasChoices("MATHAGENT_STATE_DIR", "state_dir"),
                            description="where the default socket lives (MATHAGENT_STATE_DIR)")
    dev: bool = Field(False, validation_alias=AliasChoices("MATHAGENT_DEV", "MATHAGENT_SANDBOX_DEV"))
    strict: bool | None = Field(None, description="refuse to start without every protection; default: not dev")

    pool_size: int = Field(6, ge=1, le=64, description="pre-forked stateless workers")
    max_sessions: int = Field(32, ge=0, le=1024, description="live stateful session workers")
    session_ttl_s: float = Field(900.0, gt=0, description="an idle session is evicted after this")

    timeout_s: float = Field(10.0, gt=0, description="default wall-clock limit per execution")
    max_timeout_s: float = Field(120.0, gt=0)
    cpu_s: float | None = Field(None, gt=0, description="CPU limit per execution; default = its wall limit. Code "
                                "still computing (on a CPU or waiting for one) when the wall limit hits is "
                                "reported as cpu_limit, code sleeping or blocked as timeout")
    memory_mb: int = Field(1024, ge=32, description="default cgroup memory limit per execution")
    max_memory_mb: int = Field(4096, ge=32)
    pids_max: int = Field(64, ge=4, description="threads per worker (cgroup pids)")
    nofile: int = Field(256, ge=16, description="RLIMIT_NOFILE")
    workdir_mb: int = Field(64, ge=1, description="size of the tmpfs working directory (and RLIMIT_FSIZE)")
    shm_mb: int = Field(16, ge=1, description="size of the private /dev/shm")
    output_cap: int = Field(64 * 1024, ge=256, description="bytes kept per stream")
    output_kill_factor: int = Field(16, ge=1, description="kill a worker that prints this many caps")
    max_code_bytes: int = Field(1 << 20, ge=1024)
    prewarm: bool = Field(True, description="pay each worker's copy-on-write faults for typical sympy lines "
                          "before it joins the pool, off the latency path (pages learned once, see "
                          "sandbox.prefault); nothing is computed or cached for user code")
    uid_base: int | None = Field(None, ge=1000, description="first slot uid; default: random per instance")

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @model_validator(mode="after")
    def _check(self) -> SandboxSettings:
        if self.max_timeout_s < self.timeout_s:
            raise ValueError("max_timeout_s must be >= timeout_s")
        if self.max_memory_mb < self.memory_mb:
            raise ValueError("max_memory_mb must be >= memory_mb")
        if self.url and not (self.url.startswith("unix:///") or self.url.startswith("http://")):
            raise ValueError("url must be unix:///abs/path.sock or http://127.0.0.1:PORT")
        return self

    @property
    def strict_mode(self) -> bool:
        return (not self.dev) if self.strict is None else self.strict

    @property
    def resolved_url(self) -> str:
        return self.url or socket_url(self.state_dir)
