"""The typed result of one sandboxed execution: the sandbox's only output contract."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class ExecStatus(StrEnum):
    ok = "ok"
    error = "error"  # the code raised; stderr holds the traceback trimmed to the user's cells
    timeout = "timeout"  # wall-clock limit hit
    cpu_limit = "cpu_limit"
    memory_limit = "memory_limit"
    output_truncated = "output_truncated"  # ran to the end but printed more than the cap
    crashed = "crashed"  # killed by a signal (segfault, abort, ...)
    sandbox_error = "sandbox_error"  # the executor itself failed: never blamed on the code


class ExecResult(BaseModel):
    """What one execution did, as the agent, the API and the trainer see it."""

    status: ExecStatus
    stdout: str = Field("", description="valid UTF-8, capped at the configured size")
    stderr: str = Field("", description="valid UTF-8, capped; tracebacks show only user cells")
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    session_id: str | None = None
    state_reset: bool = Field(
        False, description="the session's worker was lost (or evicted to make room for other sessions): its "
        "successful cells were replayed before this cell, or will be before the next one"
    )
    detail: str | None = Field(None, description="a short human-readable reason for non-ok statuses")

    @property
    def ok(self) -> bool:
        return self.status is ExecStatus.ok
