"""A scripted engine and a scripted sandbox for the loop's state-machine tests.

The engine is a real :class:`agent.engines.base.Engine` in everything but the sampling: it uses
the real SmolLM2 tokenizer and chat template, applies stop strings and token limits the way the
engines do (the matched stop string is kept, the end-of-turn id is part of the output), and
returns the next scripted text instead of sampling. It records every request and every id it
returned, so tests can prove the trajectory holds exactly the consumed and produced ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agent.engines.base import Completion, Delta, FinishReason, GenerationRequest
from sandbox.result import ExecResult


class ScriptedEngine:
    def __init__(self, tokenizer, script: list[str], version: str = "scripted-v1", delay_s: float = 0.0) -> None:
        self.tok = tokenizer
        self.script = list(script)
        self.version = version
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []
        self.produced: list[list[int]] = []
        self.cancelled = 0

    @property
    def model_version(self) -> str:
        return self.version

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=False))

    def chat_prefix(self, messages: list[dict[str, str]]) -> list[int]:
        out = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(out["input_ids"] if isinstance(out, dict) else out)

    def _complete(self, request: GenerationRequest) -> Completion:
        self.requests.append(request)
        text = self.script.pop(0) if self.script else "I give up."
        stop_string = None
        cut = len(text)
        for s in request.stop:
            i = text.find(s)
            if i >= 0 and i + len(s) <= cut:
                cut, stop_string = i + len(s), s
        ids = self.encode(text[:cut])
        eos = stop_string is None
        if eos:
            ids.append(self.tok.eos_token_id)
        finish = FinishReason.stop
        if len(ids) > request.max_new_tokens:
            ids, eos, stop_string, finish = ids[: request.max_new_tokens], False, None, FinishReason.length
        self.produced.append(ids)
        return Completion(
            token_ids=ids, text=self.decode(ids), finish_reason=finish, stop_string=stop_string, eos=eos,
            model_version=request.version or self.version,
        )

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [self._complete(request)]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        done = self._complete(request)
        finished = False
        try:
            for i, t in enumerate(done.token_ids):
                await asyncio.sleep(self.delay_s)
                last = i == len(done.token_ids) - 1
                finished = last
                yield Delta(token_ids=[t], text=self.decode([t]), done=done if last else None)
        finally:
            if not finished:  # closed or cancelled before the last token: generation stopped
                self.cancelled += 1

    async def aclose(self) -> None:
        return None


class ScriptedSandbox:
    """Returns scripted results (or raises scripted exceptions) and records the calls."""

    def __init__(self, results: list[ExecResult | Exception]) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, str | None]] = []
        self.closed: list[str] = []

    async def execute(self, code, *, session_id=None, timeout_s=None, memory_mb=None) -> ExecResult:
        self.calls.append((code, session_id))
        r = self.results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r.model_copy(update={"session_id": session_id})

    async def close_session(self, session_id: str) -> None:
        self.closed.append(session_id)
