"""The in-process inference engine: a transformers causal LM behind :class:`~agent.engines.base.Engine`.

Concurrent requests (episodes at different turns, the ``n`` samples of one request) are batched
dynamically by one background worker thread, so torch never blocks the event loop:

- a new request is prefilled on its own (the ``n`` samples share that prefill) and then joins the
  running decode batch at the next step; finished or cancelled rows leave it at once;
- a prefill starts from the stored keys/values of the longest earlier prompt prefix it shares
  (:mod:`agent.engines.prefix_cache`: the next turn of an episode, the common opening of the agent
  prompt), with bit-identical results, so only the new part of a prompt costs time;
- the decode step runs the linear layers batched and attention per row over that row's own KV
  buffers (:mod:`agent.engines.kvrows`), in pass shapes verified to be bit-exact, so a greedy
  request gives the same tokens alone or in any batch, and a seeded sample the same draws
  (per-row ``torch.Generator``);
- stop strings end a completion right after the token that completes them (kept in text and ids,
  like vLLM's ``include_stop_str_in_output``); a sampled end-of-turn/eos id ends it too and is
  kept in ``token_ids`` (``eos=True``), not in the text;
- several model versions can be held at once (hot swap): ``request.version`` pins one, ``None``
  means the active one.

Results travel back to the event loop of each caller with ``call_soon_threadsafe``; a cancelled
caller or an abandoned stream marks its row, and the worker drops it before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agent.engines import kvrows
from agent.engines.base import (
    Completion,
    Delta,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    FinishReason,
    GenerationRequest,
)
from agent.engines.detok import IncrementalText
from agent.engines.kvrows import (
    PREFILL_CHUNK,
    DecodeRows,
    decode_step,
    invariant_rows,
    prefill,
    prepare_model,
)
from agent.engines.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES, PrefixStore
from agent.engines.sampling import row_generator, sample_token
from agent.engines.tokens import TokenizerOps

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class _Version:
    """One loaded model version."""

    name: str
    model: PreTrainedModel
    eos_ids: frozenset[int]
    max_positions: int
    num_layers: int
    removed: bool = False  # set by remove_version: its prompts no longer enter the prefix store
    _shape: dict[int, DecodeRows] = field(default_factory=dict)  # torch thread count -> bit-exact pass shape

    def decode_rows(self, limit: int) -> DecodeRows:
        threads = torch.get_num_threads()
        if threads not in self._shape:
            shape = self._shape[threads] = invariant_rows(self.model, limit)
            log.info("version %s: bit-exact decode passes of %s rows (threads=%d)", self.name,
                     ",".join(map(str, shape.sizes)), threads)
        return self._shape[threads]


@dataclass(eq=False)
class _Row:
    """One sequence being generated (one of the ``n`` samples of a request)."""

    version: _Version
    request: GenerationRequest
    generator: torch.Generator
    text: IncrementalText
    loop: asyncio.AbstractEventLoop
    on_delta: Callable[[Delta | EngineError], None] | None  # streaming sink (called on the event loop)
    future: asyncio.Future[Completion]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # filled when the request asks for them
    cache: kvrows.RowCache | None = None
    cancelled: bool = False  # set from the event loop, read by the worker
    done: bool = False
    pending_delta: list[int] = field(default_factory=list)


@dataclass(eq=False)
class _Job:
    rows: list[_Row]


@dataclass
class EngineStats:
    """Counters for tests and benchmarks (read without locking: monotonic ints)."""

    decode_steps: int = 0
    forward_passes: int = 0
    tokens_generated: int = 0
    max_rows_in_step: int = 0
    prefill_tokens: int = 0  # prompt tokens run through the model (the reused ones not counted)
    prefix_hits: int = 0  # prefills that started from a stored prefix
    prefix_reused_tokens: int = 0  # prompt tokens taken from the store instead
    prefill_seconds: float = 0.0  # worker time in prefills
    decode_seconds: float = 0.0  # worker time in decode steps
    rows_decoded: int = 0  # live rows summed over decode passes (padding rows not counted)


class TransformersEngine(TokenizerOps):
    """In-process engine over a transformers causal LM; see the module docstring."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        version: str,
        *,
        max_batch: int = 16,
        threads: int | None = None,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        """``threads``: if given, ``torch.set_num_threads(threads)`` (process-wide). On the 2-core
        machines of this project 2 threads decode a lone row as fast as 1 and 8 rows 1.6x faster
        (docs/models.md saw batch-1 slow down with 2 threads under ``model.generate``; this engine's
        matrix-vector path does not): ``mathagent bench engine`` compares.
        ``prefix_cache_bytes``: bound of the stored prompt prefixes (0 turns reuse off)."""
        if threads is not None:
            torch.set_num_threads(threads)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.stats = EngineStats()
        self.prefix_cache = PrefixStore(prefix_cache_bytes)
        self._versions: dict[str, _Version] = {}
        self._active = version
        self.add_version(version, model)
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._rows: list[_Row] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="transformers-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_path(cls, path: Path | str, version: str | None = None, **kwargs: Any) -> TransformersEngine:
        """Load a checkpoint directory (model + tokenizer); ``version`` defaults to its content id."""
        from agent.modelstore import load_model, load_tokenizer, resolve

        path = Path(path).expanduser()
        if version is None:
            version = resolve(str(path), path.parent).version
        return cls(load_model(path), load_tokenizer(path), version, **kwargs)

    # ---- versions -------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        return self._active

    @property
    def versions(self) -> list[str]:
        return list(self._versions)

    def add_version(self, version: str, model: PreTrainedModel) -> None:
        """Hold ``model`` as ``version`` beside the others (it becomes active only by :meth:`set_active`)."""
        if version in self._versions:
            raise EngineRequestError(f"model version {version!r} is already loaded")
        prepare_model(model)
        eos: set[int] = set()
        for source in (self.tokenizer.eos_token_id, model.config.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(x) for x in source)
        self._versions[version] = _Version(
            name=version,
            model=model,
            eos_ids=frozenset(eos),
            max_positions=int(getattr(model.config, "max_position_embeddings", 2048)),
            num_layers=int(model.config.num_hidden_layers),
        )

    def model(self, version: str | None = None) -> PreTrainedModel:
        """The model object of ``version`` (default: the active one)."""
        entry = self._versions.get(version or self._active)
        if entry is None:
            raise EngineRequestError(f"unknown model version {version!r}")
        return entry.model

    def set_active(self, version: str) -> None:
        if version not in self._versions:
            raise EngineRequestError(f"unknown model version {version!r} (loaded: {', '.join(self._versions)})")
        self._active = version

    def remove_version(self, version: str) -> None:
        """Forget ``version``; requests already running on it finish on it (their rows hold the model)."""
        if version == self._active:
            raise EngineRequestError(f"model version {version!r} is active: activate another one first")
        entry = self._versions.pop(version, None)
        if entry is None:
            raise EngineRequestError(f"unknown model version {version!r}")
        entry.removed = True  # before the drop: a prefill finishing now stores nothing (checked under the store's lock)
        self.prefix_cache.drop(entry)

    def clear_prefix_cache(self) -> None:
        """Forget every stored prompt prefix (benchmarks: start each leg cold)."""
        self.prefix_cache.clear()

    # ---- requests -------------------------------------------------------------------------

    @property
    def active_rows(self) -> int:
        """Rows in the decode batch or waiting for prefill (0 when idle)."""
        return len(self._rows) + sum(len(j.rows) for j in self._pending)

    def _validate(self, request: GenerationRequest, stream: bool) -> _Version:
        if self._closed:
            raise EngineUnavailableError("the engine is closed")
        version = request.version or self._active
        entry = self._versions.get(version)
        if entry is None:
            raise EngineRequestError(f"unknown model version {version!r} (loaded: {', '.join(self._versions)})")
        if not request.prompt_ids:
            raise EngineRequestError("prompt_ids is empty")
        vocab = int(entry.model.config.vocab_size)
        if min(request.prompt_ids) < 0 or max(request.prompt_ids) >= vocab:
            raise EngineRequestError(f"prompt_ids contain ids outside the vocabulary [0, {vocab})")
        if len(request.prompt_ids) >= entry.max_positions:
            raise EngineRequestError(
                f"prompt of {len(request.prompt_ids)} tokens does not fit the model context of {entry.max_positions}"
            )
        if request.max_new_tokens < 1:
            raise EngineRequestError("max_new_tokens must be at least 1")
        if request.temperature < 0 or not 0 < request.top_p <= 1:
            raise EngineRequestError("temperature must be >= 0 and top_p in (0, 1]")
        if not 1 <= request.n <= self.max_batch:
            raise EngineRequestError(f"n must be in [1, {self.max_batch}]")
        if stream and request.n != 1:
            raise EngineRequestError("streaming needs n == 1")
        return entry

    def _submit(self, request: GenerationRequest, on_delta: Callable[[Delta | EngineError], None] | None) -> list[_Row]:
        entry = self._validate(request, stream=on_delta is not None)
        loop = asyncio.get_running_loop()
        rows = [
            _Row(
                version=entry,
                request=request,
                generator=row_generator(request.seed, k),
                text=IncrementalText(self.tokenizer, request.stop),
                loop=loop,
                on_delta=on_delta,
                future=loop.create_future(),
            )
            for k in range(request.n)
        ]
        with self._cond:
            self._pending.append(_Job(rows))
            self._cond.notify()
        return rows

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        rows = self._submit(request, None)
        try:
            return [await row.future for row in rows]
        except asyncio.CancelledError:
            for row in rows:
                row.cancelled = True
            raise

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        queue: asyncio.Queue[Delta | EngineError] = asyncio.Queue()
        (row,) = self._submit(request, queue.put_nowait)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, EngineError):
                    raise item
                yield item
                if item.done is not None:
                    return
        finally:
            if not row.future.done():
                row.cancelled = True

    async def aclose(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)

    # ---- worker thread --------------------------------------------------------------------

    def _deliver(self, row: _Row, fn: Callable[[], None]) -> None:
        try:
            row.loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the caller's event loop is gone: nobody is listening any more
            row.cancelled = True

    def _finish(self, row: _Row, reason: FinishReason, eos: bool = False) -> None:
        row.done = True
        completion = Completion(
            token_ids=list(row.tokens),
            text=row.text.text,
            finish_reason=reason,
            stop_string=row.text.stop_string,
            eos=eos,
            model_version=row.version.name,
            logprobs=list(row.logprobs) if row.request.logprobs else None,
        )
        if row.on_delta is not None:
            delta = Delta(token_ids=row.pending_delta, text=row.text.delta(final=True), done=completion)
            row.pending_delta = []
            self._deliver(row, lambda: row.on_delta(delta) if row.on_delta else None)

        def resolve() -> None:
            if not row.future.done():
                row.future.set_result(completion)

        self._deliver(row, resolve)

    def _fail(self, rows: list[_Row], exc: BaseException) -> None:
        err = exc if isinstance(exc, EngineError) else EngineError(f"generation failed: {type(exc).__name__}: {exc}")
        for row in rows:
            row.done = True

            def reject(row: _Row = row) -> None:
                if row.on_delta is not None:
                    row.on_delta(err)
                if not row.future.done():
                    row.future.set_exception(err)
                    row.future.exception()  # mark retrieved: a stream reports it through its queue

            self._deliver(row, reject)

    def _sample(self, row: _Row, logits: torch.Tensor) -> None:
        """Sample the row's next token from its 1-D logits and advance it (with the token's
        log-probability under the model, before temperature and top-p, when asked for: what
        vLLM reports by default, its ``raw_logprobs`` mode)."""
        token = sample_token(logits, row.request.temperature, row.request.top_p, row.generator)
        if row.request.logprobs:
            row.logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[token]))
        self._advance(row, token)

    def _advance(self, row: _Row, token: int) -> None:
        """Record a sampled token and decide whether the row is finished."""
        row.tokens.append(token)
        row.pending_delta.append(token)
        self.stats.tokens_generated += 1
        eos = token in row.version.eos_ids
        row.text.push(token, special=eos)
        assert row.cache is not None
        if eos:
            self._finish(row, FinishReason.stop, eos=True)
        elif row.text.stop_string is not None:
            self._finish(row, FinishReason.stop)
        elif len(row.tokens) >= row.request.max_new_tokens or row.cache.length + 1 >= row.version.max_positions:
            self._finish(row, FinishReason.length)
        elif row.on_delta is not None:
            delta = Delta(token_ids=row.pending_delta, text=row.text.delta(final=False))
            row.pending_delta = []
            on_delta = row.on_delta
            self._deliver(row, lambda: on_delta(delta))

    def _prefill(self, job: _Job) -> None:
        version, prompt = job.rows[0].version, job.rows[0].request.prompt_ids
        prefix = self.prefix_cache.lookup(version, prompt)
        t0 = time.perf_counter()
        cache, logits = prefill(version.model, prompt, prefix)
        self.stats.prefill_seconds += time.perf_counter() - t0
        reused = 0 if prefix is None else prefix.length
        self.stats.forward_passes += -(-(len(prompt) - reused) // PREFILL_CHUNK)
        self.stats.prefill_tokens += len(prompt) - reused
        if prefix is not None:
            self.stats.prefix_hits += 1
            self.stats.prefix_reused_tokens += reused
        self.prefix_cache.insert(version, prompt, cache, alive=lambda: not version.removed)
        for k, row in enumerate(job.rows):
            row.cache = cache if k == 0 else cache.clone()
        for row in job.rows:
            self._sample(row, logits)

    def _decode(self, entry: _Version, rows: list[_Row]) -> None:
        """One decode step for ``rows`` of one version."""
        shape = entry.decode_rows(self.max_batch)
        caches = [r.cache for r in rows if r.cache is not None]
        t0 = time.perf_counter()
        try:
            logits = decode_step(entry.model, caches, [r.tokens[-1] for r in rows], shape)
        except Exception as exc:
            log.exception("decode step failed")
            self._fail(rows, exc)
            return
        self.stats.decode_seconds += time.perf_counter() - t0
        self.stats.forward_passes += shape.passes(len(rows))
        self.stats.rows_decoded += len(rows)
        for i, row in enumerate(rows):
            self._sample(row, logits[i])

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending and not self._rows:
                    self._cond.wait()
                if self._closed:
                    stranded = self._rows + [r for j in self._pending for r in j.rows]
                    self._rows, self._pending = [], []
                    break
                admitted: list[_Job] = []
                room = self.max_batch - len(self._rows)
                while self._pending and len(self._pending[0].rows) <= room:
                    job = self._pending.pop(0)
                    room -= len(job.rows)
                    admitted.append(job)
            for job in admitted:
                live = [r for r in job.rows if not r.cancelled]
                if not live:
                    continue
                try:
                    self._prefill(_Job(live))
                except Exception as exc:
                    log.exception("prefill failed")
                    self._fail(live, exc)
                    continue
                self._rows.extend(r for r in live if not r.done)
            self._rows = [r for r in self._rows if not r.done and not r.cancelled]
            if not self._rows:
                continue
            self.stats.decode_steps += 1
            self.stats.max_rows_in_step = max(self.stats.max_rows_in_step, len(self._rows))
            by_version: dict[int, list[_Row]] = {}
            for row in self._rows:
                by_version.setdefault(id(row.version), []).append(row)
            for group in by_version.values():
                self._decode(group[0].version, group)
            self._rows = [r for r in self._rows if not r.done and not r.cancelled]
        self._fail(stranded, EngineUnavailableError("the engine was closed"))

