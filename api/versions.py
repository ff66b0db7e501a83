"""Typed records of the hot swap: phases with timings, one swap, and the ``/admin/versions`` view."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

SwapStatus = Literal["running", "committed", "retired", "failed", "rolled_back"]


class PhaseTiming(BaseModel):
    name: str = Field(description="prepare | commit | drain | retire (in-place vLLM reloads add load and verify)")
    seconds: float
    started_at: float
    detail: str = ""


class GoldenCheck(BaseModel):
    prompt_chars: int
    expected_recorded: bool
    matched: bool | None = Field(description="None when no expected text was recorded for this prompt")
    served_by: str = Field(description="the version the engine reports for the output")


class SwapRecord(BaseModel):
    """One deploy or rollback, from prepare to retire."""

    id: int
    kind: Literal["deploy", "rollback"]
    method: str = Field(description="load-beside | lora-blue-green | in-place-reload | flip-back | noop")
    from_version: str | None
    to_version: str
    status: SwapStatus = "running"
    phases: list[PhaseTiming] = Field(default_factory=list)
    golden: list[GoldenCheck] = Field(default_factory=list)
    error: str | None = None
    started_at: float = Field(default_factory=time.time)
    committed_at: float | None = None
    finished_at: float | None = None

    def phase(self, name: str) -> PhaseTiming | None:
        for p in self.phases:
            if p.name == name:
                return p
        return None


class VersionInfo(BaseModel):
    version: str
    in_registry: bool = Field(description="published in the registry (the configured base model is, once the "
                              "trainer imported it)")
    configured_base: bool = Field(False, description="the configured model (MATHAGENT_MODEL): listed once, under the "
                                  "version the engine serves it as (its content id)")
    registry_version: str | None = Field(None, description="the registry's other name for these weights (an import "
                                         "of the base model made before imports were named by its content id)")
    active: bool
    previous: bool
    resident: bool = Field(description="loaded in the inference engine now")
    pinned_episodes: int = Field(0, description="solves in flight pinned to this version")
    kind: Literal["full", "lora"] = "full"
    parent: str | None = None
    base_model: str | None = None
    created_at: float | None = None
    eval_results: dict[str, Any] = Field(default_factory=dict)
    training_config: dict[str, Any] = Field(default_factory=dict)
    golden_prompts: int = 0
    files: int = 0


class VersionsResponse(BaseModel):
    active: str
    previous: str | None
    registry_active: str | None = Field(description="the registry's pointer (what a restarted gateway serves)")
    resident: list[str]
    versions: list[VersionInfo]
    swap: SwapRecord | None = Field(description="the swap now running or draining, if any")
    history: list[SwapRecord] = Field(description="recent swaps, newest first")
