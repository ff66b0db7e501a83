"""Wire models of the OpenAI-compatible endpoints (``/v1/models``, ``/v1/chat/completions``).

They follow the shapes of the OpenAI API as the official ``openai`` client parses them: a
completion object with one choice per sample (``n``), ``chat.completion.chunk`` chunks (role
first, content deltas tagged with their choice ``index``, a chunk with ``finish_reason`` per
choice, an optional usage chunk with ``choices: []``), and ``data: [DONE]``.

The request declares every OpenAI field a client may send, so each one the server cannot honour
is refused by name (``api.chat_request``) instead of silently ignored; fields nobody declared
(vendor extensions) are logged and ignored, as vLLM does. Numbers must be finite. The mathagent
extras (``trajectory_id``, ``model_version``, ``answer``...) are additional fields the client keeps.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.protocol import clean_text

FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: Annotated[str, AfterValidator(clean_text)] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str, AfterValidator(clean_text)] | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = Field(None, description="not supported: this server has no client-side tools")
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=128, description="choices: on the agent model, n samples and their majority vote")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    max_tokens: int | None = Field(None, ge=1, description="the reply's model tokens at most (every turn of the episode)")
    max_completion_tokens: int | None = Field(None, ge=1, description="the same as max_tokens (OpenAI's newer name)")
    stop: str | list[str] | None = Field(None, description="plain model only: stop sequences (at most 4)")
    user: str | None = Field(None, max_length=256)
    # OpenAI fields this server refuses unless they are left at their defaults
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    # mathagent extensions (the openai client sends them with `extra_body`)
    max_turns: int | None = Field(None, ge=0, le=64, description="mathagent: tool calls at most")
    gold: Annotated[str, AfterValidator(clean_text)] | None = Field(None, max_length=1000, description="mathagent: grade against this answer")

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    @property
    def reply_tokens(self) -> int | None:
        """The reply's bound: ``max_completion_tokens``, else ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mathagent"
    version: str | None = Field(None, description="mathagent: the weights now serving this id")
    description: str | None = Field(None, description="mathagent: what this id does")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason | None
    logprobs: None = None
    # mathagent extras
    trajectory_id: str | None = Field(None, description="mathagent: this choice's trajectory (agent model)")
    answer: str | None = Field(None, description="mathagent: this choice's final answer (agent model)")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str
    # mathagent extras
    model_version: str
    trajectory_id: str | None = Field(None, description="the trajectory behind `answer` (agent model; none for plain)")
    answer: str | None = Field(None, description="the final answer (the majority vote of the choices when n > 1)")
    correct: bool | None = None
    vote_shares: dict[str, float] | None = Field(None, description="answer shares over the choices (n > 1)")
    feedback_token: str | None = Field(None, description="send it with feedback on `trajectory_id`: the rating "
                                       "becomes a training label (README, who may call)")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    # mathagent extras
    model_version: str
    trajectory_id: str | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
