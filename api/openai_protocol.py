"""Wire models of the OpenAI-compatible endpoints (``/v1/models``, ``/v1/chat/completions``).

They follow the shapes of the OpenAI API as the official ``openai`` client parses them: a
completion object, ``chat.completion.chunk`` chunks (role first, content deltas, a chunk with
``finish_reason``, an optional usage chunk with ``choices: []``), and ``data: [DONE]``. The
request accepts unknown fields (clients send many); the router logs and ignores them. The
mathagent extras (``trajectory_id``, ``model_version``) are additional fields the client keeps.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.protocol import clean_text


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: Annotated[str, AfterValidator(clean_text)] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str, AfterValidator(clean_text)] | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=128)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
    # mathagent extensions (the openai client sends them with `extra_body`)
    max_turns: int | None = Field(None, ge=0, le=64, description="mathagent: tool calls at most")
    gold: Annotated[str, AfterValidator(clean_text)] | None = Field(None, max_length=1000, description="mathagent: grade against this answer")

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mathagent"
    version: str | None = Field(None, description="mathagent: the weights now serving this id")


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
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str
    # mathagent extras
    trajectory_id: str
    model_version: str
    answer: str | None = None
    correct: bool | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"] | None = None
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
    trajectory_id: str
    model_version: str


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
