"""The hot swap of the served model version: one state machine over both engines.

A swap (``deploy``) runs these phases, each timed (``/admin/versions`` and the
``mathagent_swap_phase_seconds`` metric):

1. **prepare** — recompute the version's checksums (``Registry.verify``: a corrupt or
   half-written version is refused here and nothing changes), load it *beside* the active one,
   and run its golden prompts greedily on it: the output must equal the text recorded at publish
   time, and the engine must report that version as the one that answered.
2. **commit** — flip the pointer: the registry's (durable, what a restarted gateway serves) and
   the engine's active version. Solves admitted from now on are pinned to the new version.
3. **drain** — solves pinned to the old version finish on it (every request of an episode
   carries its pinned version, see :mod:`api.pinned`).
4. **retire** — once no solve holds the old version, its weights are unloaded. The registry's
   ``gc`` never deletes a version a gateway holds: this gateway lists its resident versions in
   the registry's serving markers.

Drain and retire run in the background after the deploy answers; a second swap is refused (409)
until they finish, except a **rollback** to the version still draining, which is a plain flip
back (its retirement is cancelled and the other version drains instead). A rollback to a version
no longer resident is an ordinary swap to it, with prepare and golden checks.

vLLM full weights have one slot, so that swap drains *first*: new solves wait at admission (they
are held, not refused), the in-flight ones finish, then pause -> reload_weights ->
update_weight_version -> resume, the golden prompts run before any user request is admitted
(a failure reloads the old weights), then commit opens admission again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from agent import prompts
from agent.engines.base import GenerationRequest, VersionedEngine
from api.metrics import Metrics
from api.swap_backends import Backend, VersionSource, VLLMBackend
from api.versions import GoldenCheck, PhaseTiming, SwapRecord, VersionInfo, VersionsResponse
from trainer.registry import CorruptVersionError, Manifest, Registry, RegistryError

log = logging.getLogger("mathagent.api.swap")

GOLDEN_TOKENS = 32  # when a golden prompt does not say how many tokens its expected text has
HISTORY = 20


class SwapError(Exception):
    """A swap refused or failed; ``status`` and ``code`` are what the admin API answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def version_source(registry: Registry, manifest: Manifest) -> VersionSource:
    """Where a registry version's weights are (a LoRA adapter trained from a registry version
    also names that version's directory as its base)."""
    base_path = None
    if manifest.kind == "lora" and manifest.base_model and registry.path(manifest.base_model).is_dir():
        base_path = registry.path(manifest.base_model)
    return VersionSource(version=manifest.version, path=registry.path(manifest.version), kind=manifest.kind,
                         base_model=manifest.base_model, base_path=base_path)


def holder_name() -> str:
    return f"gateway-{socket.gethostname()}-{os.getpid()}"


class SwapManager:
    def __init__(
        self,
        engine: VersionedEngine,
        backend: Backend,
        registry: Registry | None,
        *,
        base: VersionSource | None,
        metrics: Metrics,
        holder: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.state_dir = state_dir  # where a LoRA version's base model spec resolves
        self.backend = backend
        self.registry = registry
        self.base = base  # the configured model (MATHAGENT_MODEL), outside the registry
        self.metrics = metrics
        self.holder = holder or holder_name()
        self.previous: str | None = None
        self.refs: dict[str, int] = {}
        self.history: deque[SwapRecord] = deque(maxlen=HISTORY)
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._retiring: dict[str, tuple[asyncio.Task[None], SwapRecord]] = {}
        self._gate = asyncio.Event()  # set = solves are admitted
        self._gate.set()
        self._released = asyncio.Event()

    # ---- admission ---------------------------------------------------------------------------

    @property
    def active(self) -> str:
        return str(self.engine.model_version)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[str]:
        """Pin one solve to the active version until it ends (the version cannot be retired meanwhile)."""
        while not self._gate.is_set():  # an in-place reload holds admission while it drains and reloads
            await self._gate.wait()
        version = self.active  # read and counted in the same event-loop step: no swap in between
        self.refs[version] = self.refs.get(version, 0) + 1
        self.metrics.pinned.labels(version=version).inc()
        try:
            yield version
        finally:
            self.refs[version] -= 1
            if not self.refs[version]:
                del self.refs[version]
            self.metrics.pinned.labels(version=version).dec()
            self._released.set()

    async def _wait_released(self, version: str | None) -> None:
        """Until no solve holds ``version`` (None: any version)."""
        while (self.refs.get(version, 0) if version is not None else sum(self.refs.values())) > 0:
            self._released.clear()
            await self._released.wait()

    # ---- bookkeeping -------------------------------------------------------------------------

    def _record(self, kind: str, method: str, to_version: str) -> SwapRecord:
        record = SwapRecord(id=next(self._ids), kind=kind, method=method, from_version=self.active,  # type: ignore[arg-type]
                            to_version=to_version)
        self.history.appendleft(record)
        return record

    @contextlib.contextmanager
    def _phase(self, record: SwapRecord, name: str, detail: str = "") -> Iterator[PhaseTiming]:
        timing = PhaseTiming(name=name, seconds=0.0, started_at=time.time(), detail=detail)
        t0 = time.perf_counter()
        try:
            yield timing
        finally:
            timing.seconds = round(time.perf_counter() - t0, 6)
            record.phases.append(timing)
            self.metrics.swap_phase.labels(phase=name).observe(timing.seconds)

    def _finish(self, record: SwapRecord, status: str, error: str | None = None) -> None:
        record.status = status  # type: ignore[assignment]
        record.error = error
        record.finished_at = time.time()
        self.metrics.swaps.labels(kind=record.kind, outcome=status).inc()

    def _commit_done(self, record: SwapRecord, old: str) -> None:
        record.status = "committed"
        record.committed_at = time.time()
        self.previous = old
        self.metrics.set_version(self.active)
        self._mark_serving()

    def _mark_serving(self) -> None:
        resident = self.backend.resident()
        self.metrics.resident.set(len(resident))
        if self.registry is None:
            return
        try:
            self.registry.mark_serving(self.holder, [self._registry_name(v) or v for v in resident])
        except (OSError, RegistryError) as exc:  # gc protection is best effort; serving goes on
            log.warning("could not mark resident versions in the registry: %s", exc)

    def busy(self) -> str | None:
        """Why a new swap cannot start now, or None."""
        if self._lock.locked():
            current = self.history[0] if self.history else None
            return f"a swap to {current.to_version if current else '?'} is in progress"
        for version in self._retiring:
            return f"version {version} is still draining ({self.refs.get(version, 0)} solves pinned to it)"
        return None

    # ---- sources -----------------------------------------------------------------------------

    async def _source(self, version: str, *, verify: bool = True) -> tuple[VersionSource, Manifest | None]:
        if self.base is not None and version == self.base.version:
            return self.base, None
        if self.registry is None:
            raise SwapError(404, "unknown_version", f"unknown version {version!r}: this gateway has no registry")
        try:
            manifest = await asyncio.to_thread(self.registry.verify if verify else self.registry.manifest, version)
        except CorruptVersionError as exc:
            raise SwapError(409, "version_corrupt", f"refused: {exc}; the active version is unchanged") from None
        except RegistryError as exc:
            raise SwapError(404, "unknown_version", f"{exc} (published versions: GET /admin/versions)") from None
        return version_source(self.registry, manifest), manifest

    async def _adapter_base(self, spec: str | None) -> str | None:
        """The version a LoRA adapter applies to: a registry version named by its manifest, or the
        content id of the model spec it names (the configured base's version when it is that model)."""
        if not spec:
            return None
        if self.base is not None and spec == self.base.version:
            return spec  # the configured base, by content id (what the trainer records)
        if self.registry is not None and self.registry.path(spec).is_dir():
            return spec
        if self.state_dir is None:
            return None
        from agent.modelstore import ModelSpecError, resolve

        try:
            resolved = await asyncio.to_thread(resolve, spec, self.state_dir, allow_download=False)
        except ModelSpecError:
            return None
        return resolved.version

    def _registry_name(self, version: str) -> str | None:
        """The registry version holding ``version``'s weights: ``version`` itself when published;
        for the configured base model also the trainer's import of it (named by its content id;
        an import made before imports were, under a ``vNNNN`` name with that content id recorded)."""
        if self.registry is None:
            return None
        with contextlib.suppress(RegistryError):
            if self.registry.path(version).is_dir():
                return version
        if self.base is not None and version == self.base.version:
            for m in self.registry.manifests():
                if m.parent is None and m.training_config.get("content_id") == version:
                    return m.version
        return None

    async def _point(self, source: VersionSource) -> None:
        """The durable half of commit: the registry's active pointer names the weights now served
        (the configured base model too, once the trainer imported it); none only for weights the
        registry does not hold."""
        if self.registry is None:
            return
        name = await asyncio.to_thread(self._registry_name, source.version)
        if name is not None:
            await asyncio.to_thread(self.registry.activate, name, verify=False)
        else:
            await asyncio.to_thread(self.registry.deactivate)

    async def _golden(self, version: str, manifest: Manifest | None, record: SwapRecord) -> None:
        """Greedy golden prompts on ``version``: the recorded text must come back, from ``version``."""
        golden = list(manifest.golden) if manifest is not None else []
        checks: list[GoldenCheck] = []
        if not golden:  # nothing recorded: one token proves the version loads and answers as itself
            ids = self.engine.chat_prefix(prompts.messages("1+1"))
            (c,) = await self.engine.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=1, version=version))
            checks.append(GoldenCheck(prompt_chars=3, expected_recorded=False, matched=None, served_by=c.model_version))
        for g in golden:
            ids = self.engine.chat_prefix(prompts.messages(g.prompt))
            request = GenerationRequest(prompt_ids=ids, max_new_tokens=g.max_new_tokens or GOLDEN_TOKENS,
                                        temperature=0.0, version=version)
            (c,) = await self.engine.generate(request)
            matched = None if g.expected is None else c.text == g.expected
            checks.append(GoldenCheck(prompt_chars=len(g.prompt), expected_recorded=g.expected is not None,
                                      matched=matched, served_by=c.model_version))
        record.golden = checks
        wrong = [c.served_by for c in checks if c.served_by != version]
        if wrong:
            raise SwapError(409, "wrong_version_served",
                            f"version {version}: the engine answered the golden prompts as {wrong[0]!r}")
        failed = sum(1 for c in checks if c.matched is False)
        if failed:
            raise SwapError(409, "golden_mismatch",
                            f"version {version}: {failed} of {len(checks)} golden prompts gave a greedy output other "
                            "than the one recorded at publish time; refused, the active version is unchanged")

    # ---- swaps -------------------------------------------------------------------------------

    async def deploy(self, version: str) -> SwapRecord:
        """Swap to ``version`` (prepare -> commit now; drain -> retire in the background)."""
        reason = self.busy()
        if reason is not None:
            raise SwapError(409, "swap_in_progress", f"one swap at a time: {reason}")
        async with self._lock:
            return await self._swap(version, "deploy")

    async def rollback(self) -> SwapRecord:
        """Back to the previous version: a flip while it is still resident, else a swap to it."""
        if self._lock.locked():
            raise SwapError(409, "swap_in_progress", f"one swap at a time: {self.busy()}")
        async with self._lock:
            target = self.previous
            if target is None and self.registry is not None:
                target = self.registry.pointer().previous
            if target is None:
                raise SwapError(409, "no_previous_version", "there is no previous version to roll back to")
            if target in self.backend.resident() and target != self.active:
                return await self._flip_back(target)
            if target == self.active:
                raise SwapError(409, "no_previous_version", f"the previous version {target} is already active")
            return await self._swap(target, "rollback")

    async def _flip_back(self, target: str) -> SwapRecord:
        record = self._record("rollback", "flip-back", target)
        old = self.active
        try:
            with self._phase(record, "commit", detail=f"{target} is still resident: pointer flip only"):
                entry = self._retiring.pop(target, None)
                if entry is not None:
                    entry[0].cancel()
                if (self.registry is not None and self.registry.path(target).is_dir()) or (
                        self.base is not None and target == self.base.version):
                    source, _ = await self._source(target, verify=False)
                else:  # a resident version from outside the registry (handed to the engine directly)
                    source = VersionSource(version=target, path=Path(), in_registry=False)
                await self._point(source)
                self.backend.flip(target)
        except SwapError as exc:
            self._finish(record, "failed", str(exc))
            raise
        self._commit_done(record, old)
        self._retire_later(old, record)
        return record

    async def _swap(self, version: str, kind: str) -> SwapRecord:
        if version == self.active:
            record = self._record(kind, "noop", version)
            self._finish(record, "committed", None)
            return record
        record = self._record(kind, "?", version)
        try:
            with self._phase(record, "prepare") as phase:
                source, manifest = await self._source(version)
                record.method = self.backend.method(source)
                if source.kind == "lora" and isinstance(self.backend, VLLMBackend):
                    base = await self._adapter_base(source.base_model)
                    if base != self.backend.base_slot:
                        raise SwapError(409, "adapter_base_not_served", (
                            f"version {version} is a LoRA adapter on {source.base_model} ({base or 'unknown'}), but "
                            f"vLLM's base weights are {self.backend.base_slot}: deploy {base or 'its base'} first; "
                            "the active version is unchanged"))
                if self.backend.needs_in_place(source):
                    phase.detail = "checksums verified; the new weights replace the old in place after the drain"
                else:
                    loaded = version not in self.backend.resident()
                    if loaded:
                        await self.backend.load(source)
                    phase.detail = "checksums verified, loaded beside the active version, golden prompts checked"
                    try:
                        await self._golden(version, manifest, record)
                    except BaseException:
                        if loaded and version != self.active:
                            await self.backend.unload(version)
                        raise
            if self.backend.needs_in_place(source):
                return await self._swap_in_place(record, source, manifest)
            old = self.active
            with self._phase(record, "commit"):
                await self._point(source)
                self.backend.flip(version)
        except SwapError as exc:
            self._finish(record, "failed", str(exc))
            raise
        except Exception as exc:
            log.exception("swap to %s failed", version)
            self._finish(record, "failed", f"{type(exc).__name__}: {exc}")
            raise SwapError(500, "swap_failed", f"swap to {version} failed: {type(exc).__name__}: {exc}; "
                            f"the active version is {self.active}") from exc
        self._commit_done(record, old)
        self._retire_later(old, record)
        return record

    async def _swap_in_place(self, record: SwapRecord, source: VersionSource, manifest: Manifest | None) -> SwapRecord:
        """Full weights on vLLM: one slot, so admission is held while it drains, reloads and verifies.

        Any failure (weights that do not load, golden prompts that do not match, an error
        mid-way) ends with the previous weights back in the slot, checked on their own golden
        prompts, before admission opens again; the version stays the old one."""
        assert isinstance(self.backend, VLLMBackend)
        from agent.engines.openai_http import WeightReloadError

        old = self.active
        previous, previous_manifest = await self._source(self.backend.base_slot, verify=False)
        self._gate.clear()
        try:
            with self._phase(record, "drain", detail="admission held: every solve in flight finishes first"):
                await self._wait_released(None)
            try:
                with self._phase(record, "load", detail="pause(wait) -> reload_weights -> reset_prefix_cache -> "
                                                        "update_weight_version -> resume"):
                    await self.backend.reload_in_place(source, previous)
            except WeightReloadError as exc:
                with self._phase(record, "verify", detail=f"{previous.version} reloaded while paused; its golden "
                                                          "prompts before any user request"):
                    await self._golden(previous.version, previous_manifest, record)
                raise SwapError(409, "weights_not_loaded", f"version {source.version}: vLLM could not load its "
                                f"weights ({exc}); {previous.version} was reloaded and checked, the active version "
                                "is unchanged") from None
            try:
                with self._phase(record, "verify", detail="golden prompts before any user request"):
                    await self._golden(source.version, manifest, record)
            except BaseException:
                log.error("version %s failed verification: reloading %s", source.version, previous.version)
                with self._phase(record, "restore", detail=f"{previous.version} reloaded and checked"):
                    await self.backend.restore(previous)
                    checks = record.golden
                    await self._golden(previous.version, previous_manifest, record)
                    record.golden = checks  # the record shows why the new version was refused
                if source.version in self.engine.versions and source.version != self.active:
                    self.engine.remove_version(source.version)
                raise
            with self._phase(record, "commit"):
                await self._point(source)
                self.backend.flip(source.version)
                await self.backend.drop_replaced(source.version)
        finally:
            self._gate.set()
        self._commit_done(record, old)
        with self._phase(record, "retire", detail="nothing beside: the old weights were replaced in place"):
            pass
        self._finish(record, "retired")
        return record

    # ---- a vLLM server that restarted ------------------------------------------------------

    async def watch_server(self, interval_s: float = 5.0) -> None:
        """Keep a vLLM server serving what this gateway serves (runs for the gateway's life).

        A vLLM server that died and came back serves its start-up weights under the label
        ``default`` and holds no adapter: admission is held, the base slot's version and every
        resident adapter are loaded again, then admission opens. While the server is down the
        solves fail fast with the engine's "unavailable" error (and /readyz says so)."""
        from agent.engines.base import EngineError

        assert isinstance(self.backend, VLLMBackend)
        backend = self.backend
        while True:
            await asyncio.sleep(interval_s)
            if self._lock.locked():
                continue  # a swap is talking to the server
            try:
                why = await backend.out_of_sync()
                if why is None:
                    continue
                async with self._lock:
                    log.warning("vLLM out of sync (%s): loading %s again", why, backend.base_slot)
                    self._gate.clear()
                    try:
                        await self._wait_released(None)
                        base, _ = await self._source(backend.base_slot, verify=False)
                        await backend.resync(base)
                        self.metrics.swaps.labels(kind="resync", outcome="committed").inc()
                    finally:
                        self._gate.set()
            except (EngineError, SwapError) as exc:
                log.warning("vLLM check: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("vLLM check failed")

    def _retire_later(self, old: str, record: SwapRecord) -> None:
        task = asyncio.create_task(self._retire(old, record), name=f"retire-{old}")
        self._retiring[old] = (task, record)

        def done(t: asyncio.Task[None]) -> None:
            if self._retiring.get(old, (None,))[0] is t:
                del self._retiring[old]

        task.add_done_callback(done)

    async def _retire(self, old: str, record: SwapRecord) -> None:
        try:
            with self._phase(record, "drain", detail=f"{self.refs.get(old, 0)} solves pinned to {old} at commit"):
                await self._wait_released(old)
        except asyncio.CancelledError:
            self._finish(record, "rolled_back", f"rolled back to {old} while it drained")
            raise
        try:
            with self._phase(record, "retire", detail=f"unloaded {old}"):
                if old != self.active and old in self.backend.resident():
                    await self.backend.unload(old)
        except Exception as exc:
            log.exception("retiring %s failed", old)
            self._finish(record, "failed", f"retire {old}: {type(exc).__name__}: {exc}")
            return
        self._mark_serving()
        self._finish(record, "retired")

    # ---- views -------------------------------------------------------------------------------

    def current(self) -> SwapRecord | None:
        for record in self.history:
            if record.status == "running" or (record.status == "committed" and record.to_version == self.active
                                              and any(r is record for _, r in self._retiring.values())):
                return record
        return None

    def versions(self) -> VersionsResponse:
        """Every version once: the configured base model and the trainer's import of it are one
        entry, under the name the engine serves it by."""
        resident = self.backend.resident()
        active = self.active
        pointer = self.registry.pointer() if self.registry is not None else None
        infos: list[VersionInfo] = []
        base = self.base.version if self.base is not None else None
        base_import = self._registry_name(base) if base is not None else None
        if self.base is not None and base is not None and base_import is None:
            infos.append(VersionInfo(version=base, in_registry=False, configured_base=True, active=base == active,
                                     previous=base == self.previous, resident=base in resident,
                                     pinned_episodes=self.refs.get(base, 0), base_model=str(self.base.path)))
        manifests = self.registry.manifests() if self.registry is not None else []
        for m in manifests:
            is_base = base is not None and m.version == base_import
            v = base if is_base and base is not None else m.version
            infos.append(VersionInfo(
                version=v, in_registry=True, configured_base=is_base,
                registry_version=m.version if m.version != v else None, active=v == active,
                previous=v == self.previous or m.version == self.previous, resident=v in resident,
                pinned_episodes=self.refs.get(v, 0), kind=m.kind, parent=m.parent, base_model=m.base_model,
                created_at=m.created_at, eval_results=m.eval_results, training_config=m.training_config,
                golden_prompts=len(m.golden), files=len(m.files),
            ))
        known = {i.version for i in infos}
        for v in resident:  # e.g. a version given to the engine directly (tests, embedded use)
            if v not in known:
                infos.append(VersionInfo(version=v, in_registry=False, active=v == active, previous=v == self.previous,
                                         resident=True, pinned_episodes=self.refs.get(v, 0)))
        return VersionsResponse(
            active=active, previous=self.previous, registry_active=pointer.active if pointer else None,
            resident=resident, versions=infos, swap=self.current(), history=list(self.history),
        )

    async def aclose(self) -> None:
        for task, _ in list(self._retiring.values()):
            task.cancel()
        for task, _ in list(self._retiring.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.registry is not None:
            with contextlib.suppress(OSError):
                self.registry.clear_serving(self.holder)
