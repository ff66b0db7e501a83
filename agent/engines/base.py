"""The engine protocol: what the agent loop needs from any inference back end.

The loop works in token ids: it sends the exact ids of the conversation so far and gets back
the exact ids the engine sampled. Nothing is re-tokenised between turns, so the trajectory's
segments concatenate to the sequence the engine really consumed (the trainer's loss masks
depend on it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class GenerationRequest(BaseModel):
    prompt_ids: list[int] = Field(description="the full conversation so far, as token ids")
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # per-request seed: the same seed gives the same sample, batched or not
    stop: list[str] = Field(default_factory=list, description="stop strings; the matched string is kept in the output")
    n: int = 1
    version: str | None = Field(None, description="pin a model version (hot swap); None = the active one")
    logprobs: bool = Field(False, description="return each sampled token's log-probability under the model "
                           "(before temperature and top-p)")


class FinishReason(StrEnum):
    stop = "stop"  # a stop string matched, or the end-of-turn token was sampled
    length = "length"  # max_new_tokens reached
    cancelled = "cancelled"


class Completion(BaseModel):
    token_ids: list[int] = Field(description="exactly the sampled ids, including a sampled end-of-turn token")
    text: str
    finish_reason: FinishReason
    stop_string: str | None = Field(None, description="which stop string ended generation, if any")
    eos: bool = Field(False, description="generation ended on the end-of-turn / eos token")
    model_version: str
    logprobs: list[float] | None = Field(None, description="one per token id, when the request asked for them")


class Delta(BaseModel):
    """A streamed piece of one completion (n must be 1 when streaming)."""

    token_ids: list[int]
    text: str
    done: Completion | None = None  # set on the last delta


@runtime_checkable
class Engine(Protocol):
    """An inference back end. Implementations: the in-process transformers engine and the
    OpenAI-compatible HTTP engine (vLLM)."""

    @property
    def model_version(self) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def chat_prefix(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat-templated conversation ending with the assistant turn opener."""
        ...

    async def generate(self, request: GenerationRequest) -> list[Completion]: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class VersionedEngine(Engine, Protocol):
    """An engine that holds several model versions at once and serves the active one by default
    (a request may pin another): what the gateway's hot swap drives. Both engines are one."""

    @property
    def versions(self) -> Collection[str]:
        """The versions it holds now."""
        ...

    def add_version(self, version: str, weights: Any, /) -> None:
        """Hold ``weights`` (a loaded model in process; a served model name on a server) as ``version``."""
        ...

    def set_active(self, version: str, /) -> None: ...

    def remove_version(self, version: str, /) -> None: ...


class EngineError(RuntimeError):
    """An inference back end failed to serve a request (the message says why)."""


class EngineRequestError(EngineError, ValueError):
    """The request itself is invalid (empty prompt, unknown model version, n with streaming...)."""


class EngineUnavailableError(EngineError):
    """The back end cannot be reached or has been closed."""
