"""The engine a retrain step generates with: the rollouts of the current version and the gate's
two evaluations (current and candidate).

On a stack whose agent runs on vLLM (``MATHAGENT_ENGINE=vllm``) the trainer generates through
the *serving* vLLM server, the one the gateway sends user traffic to (TRL's server mode; vLLM
batches the trainer's requests with the users'):

- a version the server's base slot holds (its weight label, or ``default`` for the ``--model``
  weights, which are MATHAGENT_MODEL) is sampled as the base model;
- a LoRA version, or a LoRA candidate, trained on the weights the slot holds is loaded as an
  adapter under a private name (``trainer-<run>-<n>-<random>``) that the gateway never routes users to
  (it sends only the names it loaded itself), and unloaded when the step ends, whatever the
  outcome; a run that starts unloads every private adapter an earlier, killed worker left
  behind (the worker runs one job at a time);
- anything else runs on the in-process engine, and the job's progress names the engine and why:
  a full-weight candidate (the slot serves users; reloading it for an evaluation would serve
  them an unvetted model) or a current version the slot does not hold.

Which weights answered comes from what vLLM reports for every completion
(:mod:`agent.engines.openai_http`). :class:`GuardedEngine` fails a request answered by other
weights, so a deploy through the gateway in the middle of a rollout cannot slip another
version's samples into training: the job fails with a clear message instead. So does a vLLM
server that stops answering (:func:`unavailable`); either way no private adapter stays loaded
and the active version is unchanged (deploying is the run's last step).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from agent.engines.base import (
    Completion,
    Delta,
    Engine,
    EngineError,
    EngineUnavailableError,
    GenerationRequest,
)
from agent.runtime import Resources
from agent.settings import AgentSettings

if TYPE_CHECKING:
    from agent.engines.openai_http import OpenAIHTTPEngine

log = logging.getLogger(__name__)

PRIVATE_PREFIX = "trainer-"  # adapter names the trainer loads on the serving vLLM


class EngineChoice(BaseModel):
    """Where one step generates: ``engine`` for the job's progress, ``why`` for an in-process fallback."""

    engine: Literal["vllm", "transformers"]
    adapter: str | None = None  # the private adapter name on vLLM
    why: str = ""

    def describe(self) -> str:
        if self.engine == "vllm":
            return "vllm" + (f" (adapter {self.adapter})" if self.adapter else "")
        return "transformers" + (f" ({self.why})" if self.why else "")


class WeightsChangedError(EngineError):
    """vLLM answered a request with other weights than the step samples (a deploy happened meanwhile)."""


def unavailable(exc: EngineUnavailableError, url: str, phase: str) -> RuntimeError:
    """The error a run fails with when the vLLM server stops answering in ``phase``."""
    return RuntimeError(f"the vLLM server at {url} stopped answering during {phase} ({exc}); the run stopped: "
                        "no adapter of it stays loaded and the active version is unchanged")


class GuardedEngine:
    """``engine`` for one version: every completion must report ``version`` (see the module doc)."""

    def __init__(self, engine: Engine, version: str) -> None:
        self.inner = engine
        self.version = version

    @property
    def model_version(self) -> str:
        return self.version

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def chat_prefix(self, messages: list[dict[str, str]]) -> list[int]:
        return self.inner.chat_prefix(messages)

    def _check(self, completion: Completion) -> Completion:
        if completion.model_version != self.version:
            raise WeightsChangedError(
                f"vLLM answered with the weights of {completion.model_version}, not {self.version}: the served "
                "version changed during the step (a deploy meanwhile); the run stops rather than mix versions")
        return completion

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        return [self._check(c) for c in await self.inner.generate(request.model_copy(update={"version": None}))]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        async for delta in self.inner.stream(request.model_copy(update={"version": None})):
            if delta.done is not None:
                self._check(delta.done)
            yield delta

    async def aclose(self) -> None:
        await self.inner.aclose()


class StepEngines:
    """Engines for the steps of one run (see the module doc); ``owner`` names its private adapters."""

    def __init__(self, resources: Resources, owner: str) -> None:
        self.resources = resources
        self.settings = resources.settings
        self.owner = "".join(c if c.isalnum() or c in "-_" else "-" for c in owner)
        self._n = itertools.count(1)

    @property
    def on_vllm(self) -> bool:
        return self.settings.engine == "vllm"

    async def unload_leftovers(self) -> list[str]:
        """Unload every private adapter on the serving vLLM (a killed worker's); best effort."""
        if not self.on_vllm:
            return []
        import asyncio

        from agent.runtime import build_vllm_engine

        engine = await asyncio.to_thread(build_vllm_engine, self.settings)
        gone = []
        try:
            for name in await engine.served_models():
                if name.startswith(PRIVATE_PREFIX):
                    await engine.unload_lora_adapter(name)
                    gone.append(name)
        except EngineUnavailableError as exc:
            log.warning("could not look for adapters left on vLLM: %s", exc)
        finally:
            await engine.aclose()
        if gone:
            log.warning("unloaded %d adapter(s) an earlier run left on vLLM: %s", len(gone), ", ".join(gone))
        return gone

    @contextlib.asynccontextmanager
    async def _in_process(self, version: str, path: Path, why: str = "") -> AsyncIterator[tuple[Engine, EngineChoice]]:
        engine = await self.resources.engine(path, version)
        try:
            yield engine, EngineChoice(engine="transformers", why=why)
        finally:
            await engine.aclose()

    @contextlib.asynccontextmanager
    async def open(self, version: str, path: Path, *, adapter: Path | None = None,
                   adapter_base: str | None = None) -> AsyncIterator[tuple[Engine, EngineChoice]]:
        """An engine generating with ``version``: the whole checkpoint at ``path`` (what the
        in-process engine loads), or on vLLM the adapter at ``adapter`` over the weights of
        ``adapter_base`` when it has one. Closed (and its adapter unloaded) on exit."""
        if not self.on_vllm:
            async with self._in_process(version, path) as pair:
                yield pair
            return
        import asyncio

        from agent.runtime import build_vllm_engine

        http = await asyncio.to_thread(build_vllm_engine, self.settings, path)
        name: str | None = None
        try:
            slot = await http.slot_version()
            if adapter is not None and adapter_base == slot:
                # a new name per load, also across processes (a resumed run): vLLM keys its prefix
                # cache by adapter name, so a reused name could serve another adapter's cached blocks
                name = f"{PRIVATE_PREFIX}{self.owner}-{next(self._n)}-{secrets.token_hex(3)}"
                await http.load_lora_adapter(name, adapter)
                http.add_version(version, name)
                http.set_active(version)
                served = GuardedEngine(http, version)
            elif adapter is None and version == slot:
                served = _on_slot(http, version)
            else:
                why = (f"an adapter on {adapter_base}, vLLM's slot holds {slot}" if adapter is not None
                       else f"full weights, vLLM's slot serves {slot} to users")
                async with self._in_process(version, path, why) as pair:
                    yield pair
                return
            yield served, EngineChoice(engine="vllm", adapter=name)
        finally:
            if name is not None:
                with contextlib.suppress(EngineError):  # a dead server holds no adapter
                    await http.unload_lora_adapter(name)
            await http.aclose()


async def reloaded_engine(settings: AgentSettings, path: Path, version: str) -> Engine:
    """An engine generating with the whole checkpoint at ``path`` on a vLLM server that serves
    no users (one ``mathagent experiment --engine vllm`` started for itself): when its slot holds
    other weights they are reloaded in place (pause, ``reload_weights``, the weight label
    ``version``, prefix-cache reset, resume). A failed reload leaves that server unusable, so
    it fails the caller (:class:`~agent.engines.openai_http.WeightReloadError`); nobody else
    was served by it."""
    import asyncio

    from agent.runtime import build_vllm_engine

    http = await asyncio.to_thread(build_vllm_engine, settings, path)
    try:
        if await http.slot_version() != version:
            await http.pause("wait")
            await http.reload_weights(path)
            await http.update_weight_version(version)
            await http.reset_prefix_cache()
            await http.resume()
        return _on_slot(http, version)
    except BaseException:
        await http.aclose()
        raise


def _on_slot(http: OpenAIHTTPEngine, version: str) -> GuardedEngine:
    """``http`` generating with its server's base slot, which holds ``version``."""
    if version != http.base_version:  # the slot was reloaded: vLLM reports it under its label
        http.add_version(version, http.base_model)
    http.set_active(version)
    return GuardedEngine(http, version)
