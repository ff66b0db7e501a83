"""A STAND-IN for a vLLM 0.33.0 OpenAI-compatible server: for tests and local development only.

Real vLLM cannot run on this project's machines (no GPU on the development and CI machines; the
lent GPU machine has a torch that vLLM 0.33.0 does not accept). The HTTP engine
(:mod:`agent.engines.openai_http`) and the gateway's hot swap are therefore tested against this
FastAPI app, which really generates (it wraps a :class:`TransformersEngine`, the tiny random
model in tests) and follows vLLM's wire behaviour for the routes mathagent uses:

- ``POST /v1/completions``: ``prompt`` as token ids (or text), ``n``, ``max_tokens``,
  ``temperature`` (default 1.0 as in vLLM), ``top_p``, ``seed``, ``stop``,
  ``include_stop_str_in_output`` (false strips the stop string from the text, ids unchanged),
  ``return_token_ids`` (choices carry ``token_ids`` and ``prompt_token_ids``; when streaming,
  ``prompt_token_ids`` in the first chunk and ``token_ids`` as per-chunk deltas),
  ``return_weight_versions`` (each choice carries ``weight_versions`` = ``[{"version", "start",
  "end"}]`` on the full response or its final stream chunk; omitted otherwise),
  ``finish_reason`` ``stop``/``length``, ``stop_reason`` = the matched stop string or ``null`` for
  EOS (the EOS id stays in ``token_ids``, not in the text), ``usage``; SSE ``data: {...}`` chunks
  ending with ``data: [DONE]``; a model name not served -> 404; errors as ``{"error": {"message",
  "type", "param", "code"}}``; ``model`` selects the base model or a loaded LoRA adapter.
- ``POST /inference/v1/generate`` (vLLM's tokens-in/tokens-out route, what the HTTP engine uses):
  ``token_ids``, ``sampling_params`` (the completion fields above), ``output_mode``, ``stream``;
  choices carry ``token_ids``, ``text``, ``finish_reason``, ``stop_reason`` and ``weight_versions``
  (on the full response or the final stream chunk), as in vLLM 0.32.0 with ``--enable-scale-out``.
- ``POST /reset_prefix_cache`` -> ``{"success": true}``.
- ``GET /v1/models``, ``GET /health``.
- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` -> plain text ``Success: LoRA
  adapter '<name>' added successfully.``, 400 on a duplicate name (the adapter is really loaded
  with peft and merged); ``POST /v1/unload_lora_adapter {"lora_name"}`` (404 if unknown).
- ``POST /pause?mode=wait|abort&clear_cache=...`` -> ``{"status": "paused"}``; new requests wait
  until ``POST /resume`` -> ``{"status": "resumed"}``; ``GET /is_paused``.
- ``POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": DIR}}``: loads the
  checkpoint at DIR in place of the base weights (the label does not change).
- ``POST /update_weight_version {"new_version"}`` -> ``{"success": true, "new_version"}``;
  ``GET /weight_info`` -> ``{"weight_version"}``; the initial label is ``"default"`` as in vLLM.
- ``api_key`` guards only ``/v1`` paths, as vLLM's ``--api-key`` does (dev and LoRA routes open).

Not reproduced: logprobs, chat completions, beam search, ``mode=keep``, streaming with ``n > 1``
(400 here), version spans that change mid-request (a request is stamped with the label current
when it started; with ``pause?mode=wait`` no request spans a change).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from agent.engines.base import Completion, EngineError, EngineRequestError, GenerationRequest
from agent.engines.transformers_engine import TransformersEngine


class CompletionBody(BaseModel):
    model: str | None = None
    prompt: list[int] | str
    max_tokens: int | None = 16
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = Field(default_factory=list)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    return_token_ids: bool | None = None
    return_weight_versions: bool = False


class GenerateBody(BaseModel):
    model: str | None = None
    token_ids: list[int] = Field(min_length=1)
    sampling_params: dict[str, Any]
    output_mode: str = "tokens"
    stream: bool = False


class LoraBody(BaseModel):
    lora_name: str
    lora_path: str | None = None


class WeightVersionBody(BaseModel):
    new_version: str


def _error(status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": status}}
    )


class _State:
    def __init__(self, engine: TransformersEngine, served_model_name: str) -> None:
        self.engine = engine
        self.served = served_model_name
        self.base_key = engine.model_version  # engine version holding the base weights
        self.loras: dict[str, str] = {}  # lora name -> engine version key
        self.weight_version = "default"
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.reloads = 0


def create_app(engine: TransformersEngine, served_model_name: str = "mathagent", api_key: str | None = None) -> FastAPI:
    """The stand-in server over ``engine`` (whose active version serves ``served_model_name``)."""
    app = FastAPI(title="fake vLLM (stand-in)")
    st = _State(engine, served_model_name)
    app.state.fake = st

    @app.middleware("http")
    async def guard_v1(request: Request, call_next: Any) -> Response:
        if api_key and request.url.path.startswith("/v1") and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse(status_code=401, content={"error": "Unauthorized"})
        response: Response = await call_next(request)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return _error(400, f"invalid request: {first.get('loc')}: {first.get('msg')}")

    def version_for(model: str | None) -> str | None:
        if model is None or model == st.served:
            return st.base_key
        return st.loras.get(model)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        now = int(time.time())
        data = [{"id": st.served, "object": "model", "created": now, "owned_by": "vllm", "root": st.served, "parent": None}]
        data += [
            {"id": name, "object": "model", "created": now, "owned_by": "vllm", "root": name, "parent": st.served}
            for name in st.loras
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionBody) -> Response:
        if body.stream and body.n != 1:
            return _error(400, "this vLLM stand-in streams only n=1")
        await st.resumed.wait()  # while paused, requests wait for /resume
        key = version_for(body.model)
        if key is None:
            return _error(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model")
        ids = body.prompt if isinstance(body.prompt, list) else engine.encode(body.prompt)
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        req = GenerationRequest(
            prompt_ids=ids,
            max_new_tokens=body.max_tokens or 16,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=stops,
            n=body.n,
            version=key,
        )
        label = st.weight_version
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model_name = body.model or st.served

        def choice_fields(index: int, c: Completion, ids_out: list[int], text: str, final: bool) -> dict[str, Any]:
            d: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": None, "stop_reason": None}
            if final:
                d["finish_reason"] = c.finish_reason.value if c.finish_reason.value != "cancelled" else "abort"
                d["stop_reason"] = c.stop_string
                if body.return_weight_versions:
                    d["weight_versions"] = [{"version": label, "start": 0, "end": len(c.token_ids)}] if c.token_ids else []
            if body.return_token_ids:
                d["token_ids"] = ids_out
            return d

        def visible_text(c: Completion) -> str:
            if c.stop_string and not body.include_stop_str_in_output and c.text.endswith(c.stop_string):
                return c.text[: -len(c.stop_string)]
            return c.text

        if not body.stream:
            st.inflight += 1
            st.idle.clear()
            task = asyncio.current_task()
            if task is not None:
                st.tasks.add(task)
            try:
                outs = await engine.generate(req)
            except EngineRequestError as exc:
                return _error(400, str(exc))
            except EngineError as exc:
                return _error(500, str(exc), "InternalServerError")
            finally:
                st.inflight -= 1
                if task is not None:
                    st.tasks.discard(task)
                if st.inflight == 0:
                    st.idle.set()
            choices = []
            for i, c in enumerate(outs):
                d = choice_fields(i, c, c.token_ids, visible_text(c), True)
                if body.return_token_ids:
                    d["prompt_token_ids"] = ids
                choices.append(d)
            n_out = sum(len(c.token_ids) for c in outs)
            return JSONResponse(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model_name,
                    "choices": choices,
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": n_out, "total_tokens": len(ids) + n_out},
                }
            )

        async def sse() -> AsyncIterator[str]:
            st.inflight += 1
            st.idle.clear()
            first = True
            sent = ""
            produced = 0
            try:
                async for delta in engine.stream(req):
                    produced += len(delta.token_ids)
                    text = delta.text
                    if delta.done is not None:
                        final_text = visible_text(delta.done)
                        text = final_text[len(sent) :] if final_text.startswith(sent) else ""
                    sent += text
                    placeholder = delta.done or Completion(
                        token_ids=[], text="", finish_reason="stop", model_version=""
                    )
                    d = choice_fields(0, placeholder, delta.token_ids, text, delta.done is not None)
                    if first and body.return_token_ids:
                        d["prompt_token_ids"] = ids
                    first = False
                    chunk = {"id": rid, "object": "text_completion", "created": created, "model": model_name, "choices": [d]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                if body.stream_options and body.stream_options.get("include_usage"):
                    usage = {"prompt_tokens": len(ids), "completion_tokens": produced, "total_tokens": len(ids) + produced}
                    chunk = {"id": rid, "object": "text_completion", "created": created, "model": model_name, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(chunk)}\n\n"
            except EngineError as exc:
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'InternalServerError', 'code': 500}})}\n\n"
            finally:
                st.inflight -= 1
                if st.inflight == 0:
                    st.idle.set()
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/inference/v1/generate", response_model=None)
    async def generate(body: GenerateBody) -> Response:
        """The completions route underneath, its answer reshaped into the generate route's."""
        sp = body.sampling_params
        known = {"max_tokens", "n", "temperature", "top_p", "seed", "stop", "include_stop_str_in_output", "skip_special_tokens"}
        inner = CompletionBody(
            model=body.model, prompt=body.token_ids, stream=body.stream, return_token_ids=True,
            return_weight_versions=True, **{k: v for k, v in sp.items() if k in known},
        )
        resp = await completions(inner)
        text_mode = body.output_mode == "text"

        def reshape(data: dict[str, Any]) -> dict[str, Any]:
            if "choices" not in data:
                return data
            for c in data["choices"]:
                c.pop("prompt_token_ids", None)
                c.pop("logprobs", None)
                c.setdefault("weight_versions", None)
                if not text_mode:
                    c.pop("text", None)
            return {"request_id": data.get("id"), "output_mode": body.output_mode, "choices": data["choices"]}

        if isinstance(resp, StreamingResponse):
            async def sse() -> AsyncIterator[str]:
                async for raw in resp.body_iterator:
                    line = raw if isinstance(raw, str) else bytes(raw).decode()
                    payload = line.strip()[5:].strip()
                    if payload and payload != "[DONE]":
                        line = f"data: {json.dumps(reshape(json.loads(payload)))}\n\n"
                    yield line

            return StreamingResponse(sse(), media_type="text/event-stream")
        if resp.status_code != 200:
            return resp
        return JSONResponse(reshape(json.loads(bytes(resp.body))))

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> dict[str, bool]:
        engine.clear_prefix_cache()
        return {"success": True}

    @app.post("/v1/load_lora_adapter", response_model=None)
    async def load_lora(body: LoraBody) -> Response:
        if body.lora_name in st.loras or body.lora_name == st.served:
            return _error(
                400,
                f"The lora adapter '{body.lora_name}' has already been loaded. If you want to load the adapter "
                "in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        if not body.lora_path or not Path(body.lora_path).is_dir():
            return _error(404, f"Loading lora {body.lora_name} failed: No adapter found for {body.lora_path}", "NotFoundError")
        key = f"lora:{body.lora_name}"
        try:
            merged = await asyncio.to_thread(_merge_lora, engine, st.base_key, body.lora_path)
        except Exception as exc:  # peft raises many kinds for a bad adapter dir
            return _error(400, f"Loading lora {body.lora_name} failed: {type(exc).__name__}: {exc}", "BadRequestError")
        engine.add_version(key, merged)
        st.loras[body.lora_name] = key
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", response_model=None)
    async def unload_lora(body: LoraBody) -> Response:
        key = st.loras.pop(body.lora_name, None)
        if key is None:
            return _error(404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError")
        engine.remove_version(key)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/pause", response_model=None)
    async def pause(mode: str = Query("abort"), clear_cache: bool = Query(True)) -> Response:
        if mode not in ("wait", "abort"):
            return JSONResponse(status_code=400, content={"error": f"mode={mode} is not supported by this vLLM stand-in"})
        st.resumed.clear()
        if mode == "abort":
            for task in list(st.tasks):
                task.cancel()
        await st.idle.wait()
        return JSONResponse({"status": "paused"})

    @app.post("/resume")
    async def resume() -> dict[str, str]:
        st.resumed.set()
        return {"status": "resumed"}

    @app.get("/is_paused")
    async def is_paused() -> dict[str, bool]:
        return {"is_paused": not st.resumed.is_set()}

    @app.post("/collective_rpc", response_model=None)
    async def collective_rpc(request: Request) -> Response:
        try:  # vLLM reads this body by hand too: {"method", "args", "kwargs", "timeout"}
            body = await request.json()
        except ValueError:
            return _error(400, "JSON decode error")
        method = body.get("method") if isinstance(body, dict) else None
        if method is None:
            return _error(400, "Missing 'method' in request body")
        if method != "reload_weights":
            return _error(400, f"this vLLM stand-in implements only reload_weights, not {method!r}")
        path = (body.get("kwargs") or {}).get("weights_path")
        if not path or not (Path(path) / "config.json").is_file():
            return _error(400, f"reload_weights: no checkpoint at {path!r}")
        from agent.modelstore import load_model

        model = await asyncio.to_thread(load_model, Path(path))
        st.reloads += 1
        old, st.base_key = st.base_key, f"base@{st.reloads}"
        engine.add_version(st.base_key, model)
        engine.set_active(st.base_key)
        engine.remove_version(old)
        return JSONResponse({"results": [None]})

    @app.post("/update_weight_version")
    async def update_weight_version(body: WeightVersionBody) -> dict[str, Any]:
        st.weight_version = body.new_version
        return {"success": True, "new_version": body.new_version}

    @app.get("/weight_info")
    async def weight_info() -> dict[str, str]:
        return {"weight_version": st.weight_version}

    return app


def _merge_lora(engine: TransformersEngine, base_key: str, lora_path: str) -> Any:
    """The base model with the adapter at ``lora_path`` merged in (a copy; the base stays)."""
    from peft import PeftModel

    base = engine.model(base_key)
    merged = PeftModel.from_pretrained(copy.deepcopy(base), lora_path).merge_and_unload()
    return merged


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a background thread; yield its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="fake-vllm", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake vLLM server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
