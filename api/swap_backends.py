"""How each inference engine holds, loads and frees model versions during a hot swap.

- :class:`TransformersBackend` (in-process engine): the new version is loaded *beside* the old
  one (two resident models during a swap). A ``lora`` registry version is applied to its base
  model with PEFT and **merged at load time** (``merge_and_unload``), so decoding costs the same
  as a full model and the engine needs no adapter support.
- :class:`VLLMBackend` (a vLLM 0.33 server through :class:`OpenAIHTTPEngine`): a ``lora`` version
  is blue/green: ``/v1/load_lora_adapter`` under a NEW name per load (vLLM can reuse the prefix
  cache of a same-name reload) from the version's own immutable directory, selected per request
  by ``model``; a ``full`` version replaces the base weights in place (``/pause?mode=wait`` ->
  ``collective_rpc reload_weights`` -> ``/update_weight_version`` -> ``/reset_prefix_cache`` ->
  ``/resume``), which has one weight slot, so the swap manager drains first (see ``api.swap``).
  Tested against :mod:`support.fake_vllm`: real vLLM cannot run on this project's machines.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.engines.base import GenerationRequest

if TYPE_CHECKING:
    from agent.engines.openai_http import OpenAIHTTPEngine
    from agent.engines.transformers_engine import TransformersEngine


@dataclass(frozen=True)
class VersionSource:
    """Where a version's weights are: a registry version directory, or the configured base model."""

    version: str
    path: Path
    kind: Literal["full", "lora"] = "full"
    base_model: str | None = None  # a LoRA adapter's base (a model spec)
    in_registry: bool = True


def load_weights(source: VersionSource, state_dir: Path) -> Any:
    """The transformers model of ``source`` (runs in a worker thread: disk and CPU bound)."""
    from agent.modelstore import load_model, resolve

    if source.kind == "full":
        return load_model(source.path)
    from peft import PeftModel

    if not source.base_model:
        raise ValueError(f"LoRA version {source.version} names no base model")
    base = load_model(resolve(source.base_model, state_dir).path)
    return PeftModel.from_pretrained(base, str(source.path)).merge_and_unload()


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
    """Blue/green LoRA adapters, or in-place full-weight reloads, on a vLLM server."""

    def __init__(self, engine: OpenAIHTTPEngine) -> None:
        self.engine = engine
        self.adapters: dict[str, str] = {}  # version -> adapter name loaded on the server
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
        name = f"{source.version}-{secrets.token_hex(4)}"  # a new name per load: no stale prefix cache
        await self.engine.load_lora_adapter(name, source.path)
        self.adapters[source.version] = name
        self.engine.add_version(source.version, name)

    async def unload(self, version: str) -> None:
        self.engine.remove_version(version)
        name = self.adapters.pop(version, None)
        if name is not None:
            await self.engine.unload_lora_adapter(name)

    def flip(self, version: str) -> None:
        self.engine.set_active(version)

    async def reload_in_place(self, source: VersionSource) -> None:
        """pause(wait) -> reload_weights -> update_weight_version -> reset_prefix_cache -> resume.

        The caller has drained every episode and holds new ones back. The label goes on the server
        before resume, so every completion of the new weights reports ``source.version``. Versions
        the base slot served before stay mapped (inactive) until :meth:`drop_replaced`."""
        await self.engine.pause(mode="wait")
        try:
            await self.engine.reload_weights(source.path)
            await self.engine.update_weight_version(source.version)
            await self.engine.reset_prefix_cache()  # no block computed by the old weights is reused
        finally:
            await self.engine.resume()
        self.base_slot = source.version
        if source.version not in self.engine.versions:
            self.engine.add_version(source.version, self.engine.base_model)

    def drop_replaced(self, keep: str) -> None:
        """Forget the versions the base slot no longer holds (after a committed in-place reload)."""
        for version in self.holds_base():
            if version != keep and version != self.engine.model_version:
                self.engine.remove_version(version)

    async def label_base(self) -> None:
        """At start: name the server's base weights. vLLM labels them ``default`` until
        ``/update_weight_version``; a server that was reloaded before this gateway started
        reports the version it holds, which then becomes the active version here."""
        ids = self.engine.encode("1")
        (c,) = await self.engine.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=1, version=self.base_slot))
        label = str(c.model_version)
        if label in ("default", self.base_slot):
            await self.engine.update_weight_version(self.base_slot)
            return
        self.engine.add_version(label, self.engine.base_model)
        self.engine.set_active(label)
        self.engine.remove_version(self.base_slot)
        self.base_slot = label


Backend = TransformersBackend | VLLMBackend
