"""The HTTP engine: a vLLM (0.33) OpenAI-compatible server behind :class:`~agent.engines.base.Engine`.

It speaks vLLM's completions API with token ids in both directions, so nothing is re-tokenised:
the prompt goes out as a list of ints, ``return_token_ids: true`` brings back the exact sampled
ids (``choices[i].token_ids``; streamed as per-chunk deltas), ``include_stop_str_in_output:
true`` keeps the matched stop string (vLLM's ``stop_reason``), and ``return_weight_versions:
true`` makes each choice report which weight version produced its tokens
(``weight_versions: [{"version", "start", "end"}]``, on the full response or the final stream
chunk). The tokenizer is loaded locally (encode, decode, chat prefix).

Versions: a version name maps to the served model name put in the request's ``model`` field (the
base model, or a runtime-loaded LoRA adapter). For the base model the label reported by the
server (``/update_weight_version``) is the truth and becomes ``Completion.model_version``.

Also here: thin clients for vLLM's hot-swap routes (LoRA load/unload, pause/resume,
``collective_rpc reload_weights``, ``update_weight_version``), used by the gateway. Tested
against :mod:`support.fake_vllm` (real vLLM cannot run on this project's machines).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ValidationError

from agent.engines.base import (
    Completion,
    Delta,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    FinishReason,
    GenerationRequest,
)
from agent.engines.tokens import TokenizerOps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class WeightVersionSpan(BaseModel):
    version: str
    start: int
    end: int


class _Choice(BaseModel):
    """The fields of a vLLM completion choice (or stream chunk choice) that we read."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    weight_versions: list[WeightVersionSpan] | None = None


class _Response(BaseModel):
    choices: list[_Choice]


class OpenAIHTTPEngine(TokenizerOps):
    def __init__(
        self,
        base_url: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model: str,
        version: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``model``: the served model name (vLLM ``--served-model-name``); ``version``: what the
        weights it serves are called here until the server reports its own label."""
        self.tokenizer = tokenizer
        self.base_model = model
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0), transport=transport
        )
        self._versions: dict[str, str] = {version: model}
        self._active = version

    @classmethod
    def from_path(cls, base_url: str, tokenizer_path: Path | str, *, model: str, version: str, **kwargs: Any) -> OpenAIHTTPEngine:
        from agent.modelstore import load_tokenizer

        return cls(base_url, load_tokenizer(Path(tokenizer_path).expanduser()), model=model, version=version, **kwargs)

    # ---- versions -------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        return self._active

    @property
    def versions(self) -> dict[str, str]:
        """version -> served model name."""
        return dict(self._versions)

    def add_version(self, version: str, served_model: str) -> None:
        if version in self._versions:
            raise EngineRequestError(f"model version {version!r} is already known")
        self._versions[version] = served_model

    def set_active(self, version: str) -> None:
        if version not in self._versions:
            raise EngineRequestError(f"unknown model version {version!r} (known: {', '.join(self._versions)})")
        self._active = version

    def remove_version(self, version: str) -> None:
        if version == self._active:
            raise EngineRequestError(f"model version {version!r} is active: activate another one first")
        if self._versions.pop(version, None) is None:
            raise EngineRequestError(f"unknown model version {version!r}")

    # ---- generation -----------------------------------------------------------------------

    def _body(self, request: GenerationRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        if not request.prompt_ids:
            raise EngineRequestError("prompt_ids is empty")
        if stream and request.n != 1:
            raise EngineRequestError("streaming needs n == 1")
        version = request.version or self._active
        served = self._versions.get(version)
        if served is None:
            raise EngineRequestError(f"unknown model version {version!r} (known: {', '.join(self._versions)})")
        body: dict[str, Any] = {
            "model": served,
            "prompt": list(request.prompt_ids),
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": request.n,
            "stop": list(request.stop),
            "include_stop_str_in_output": True,
            "skip_special_tokens": True,
            "return_token_ids": True,
            "return_weight_versions": True,
            "stream": stream,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        return version, body

    def _completion(self, version: str, served: str, token_ids: list[int], text: str, choice: _Choice) -> Completion:
        reason = {"stop": FinishReason.stop, "length": FinishReason.length, "abort": FinishReason.cancelled}.get(
            choice.finish_reason or ""
        )
        if reason is None:
            raise EngineError(f"vLLM returned an unknown finish_reason {choice.finish_reason!r}")
        stop_string = choice.stop_reason if isinstance(choice.stop_reason, str) else None
        eos = reason == FinishReason.stop and stop_string is None
        served_version = version
        if served == self.base_model and choice.weight_versions:
            labels = [s.version for s in choice.weight_versions]
            served_version = labels[-1]
            if len(set(labels)) > 1:
                log.warning("completion spans weight versions %s", labels)
        return Completion(
            token_ids=token_ids,
            text=text,
            finish_reason=reason,
            stop_string=stop_string,
            eos=eos,
            model_version=served_version,
        )

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        version, body = self._body(request, stream=False)
        data = await self._post_json("/v1/completions", body)
        try:
            parsed = _Response.model_validate(data)
        except ValidationError as exc:
            raise EngineError(f"vLLM returned an unexpected completion body: {exc.errors()[:1]}") from exc
        out = []
        for choice in sorted(parsed.choices, key=lambda c: c.index):
            if choice.token_ids is None:
                raise EngineError("vLLM returned no token_ids: the server must support return_token_ids (vLLM >= 0.10.2)")
            out.append(self._completion(version, body["model"], choice.token_ids, choice.text, choice))
        return out

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        version, body = self._body(request, stream=True)
        ids: list[int] = []
        text: list[str] = []
        try:
            async with self._client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._http_error(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise EngineError(f"vLLM stream error: {_error_message(chunk)}")
                    for raw in chunk.get("choices", []):
                        choice = _Choice.model_validate(raw)
                        delta_ids = choice.token_ids or []
                        if choice.token_ids is None and choice.text:
                            raise EngineError("vLLM streamed no token_ids: the server must support return_token_ids")
                        ids.extend(delta_ids)
                        text.append(choice.text)
                        if choice.finish_reason is not None:
                            done = self._completion(version, body["model"], list(ids), "".join(text), choice)
                            yield Delta(token_ids=delta_ids, text=choice.text, done=done)
                            return
                        yield Delta(token_ids=delta_ids, text=choice.text)
        except httpx.TransportError as exc:
            raise EngineUnavailableError(f"vLLM at {self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        raise EngineError("vLLM ended the stream without a finish_reason")

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- hot-swap routes (gateway use) --------------------------------------------------------

    async def load_lora_adapter(self, name: str, path: Path | str) -> str:
        """``POST /v1/load_lora_adapter`` (plain-text answer; 400 if ``name`` is already loaded)."""
        return await self._post_text("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    async def unload_lora_adapter(self, name: str) -> str:
        return await self._post_text("/v1/unload_lora_adapter", {"lora_name": name})

    async def pause(self, mode: str = "wait", clear_cache: bool = True) -> None:
        """Stop admitting generation; ``wait`` lets in-flight requests finish first."""
        await self._post_json("/pause", None, params={"mode": mode, "clear_cache": str(clear_cache).lower()})

    async def resume(self) -> None:
        await self._post_json("/resume", None)

    async def reload_weights(self, weights_path: Path | str) -> None:
        """Full weights in place: ``collective_rpc reload_weights`` (call between pause and resume)."""
        await self._post_json("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(weights_path)}})

    async def update_weight_version(self, new_version: str) -> None:
        await self._post_json("/update_weight_version", {"new_version": new_version})

    async def served_models(self) -> list[str]:
        data = await self._request("GET", "/v1/models")
        return [m["id"] for m in data.json().get("data", [])]

    # ---- plumbing -------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            resp = await self._client.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            raise EngineUnavailableError(f"vLLM at {self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise self._http_error(resp)
        return resp

    async def _post_json(self, path: str, body: Any, params: dict[str, str] | None = None) -> Any:
        resp = await self._request("POST", path, body, params)
        return resp.json() if resp.content else None

    async def _post_text(self, path: str, body: Any) -> str:
        return (await self._request("POST", path, body)).text

    def _http_error(self, resp: httpx.Response) -> EngineError:
        try:
            message = _error_message(resp.json())
        except ValueError:
            message = resp.text[:500]
        where = f"vLLM {resp.request.method} {resp.request.url.path} -> {resp.status_code}: {message}"
        if resp.status_code in (400, 404, 422):
            return EngineRequestError(where)
        if resp.status_code in (502, 503, 504):
            return EngineUnavailableError(where)
        return EngineError(where)


def _error_message(data: Any) -> str:
    """vLLM's error bodies: ``{"error": {"message": ...}}``, ``{"error": "..."}`` or ``{"detail": ...}``."""
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err)
    return str(data)
