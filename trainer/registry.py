"""The versioned model registry: immutable version directories and an atomic active pointer.

Layout under ``root``::

    versions/<version>/          immutable: weights (full or a LoRA adapter) + manifest.json
    staging/<random>/            a version being written; renamed into versions/ when complete
    pointer.json                 {"active": ..., "previous": ...}, swapped with os.replace
    serving/<holder>.json        versions a running gateway holds in memory (gc never deletes them)

Why by hand: no library does "publish a directory atomically with checksums and keep a
crash-safe pointer" for model checkpoints; the whole mechanism is fsync + rename.

Guarantees:
- A version directory appears in ``versions/`` only after every file and its manifest (with the
  sha256 of every file) were fsync'd; a crash mid-publish leaves only a staging directory, which
  :meth:`Registry.clean_staging` removes.
- :meth:`Registry.verify` recomputes every checksum; a corrupt or partial version is refused
  with :class:`CorruptVersionError` and never becomes active.
- The pointer is replaced atomically (write a temp file, fsync, ``os.replace``, fsync the dir).
- :meth:`Registry.gc` never deletes the active version, the previous one, or any version the
  caller says is still serving requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
POINTER = "pointer.json"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why."""


class CorruptVersionError(RegistryError):
    """A version whose files do not match its manifest (or that has no manifest)."""


class GoldenPrompt(BaseModel):
    """A prompt checked on a freshly loaded version before it takes traffic (hot swap)."""

    prompt: str
    expected: str | None = Field(None, description="the greedy output this version gave at publish time")
    max_new_tokens: int | None = Field(
        None,
        description="greedy tokens that produced ``expected``; ``prompt`` is then the agent's user message, sent "
        "as agent.prompts.messages(prompt) through the chat template (set by the iteration driver)",
    )


class Manifest(BaseModel):
    version: str
    parent: str | None = None
    kind: Literal["full", "lora"] = "full"
    base_model: str = Field(description="the base model spec (a LoRA adapter applies to it)")
    created_at: float = Field(default_factory=time.time)
    training_config: dict[str, Any] = Field(default_factory=dict)
    eval_results: dict[str, Any] = Field(default_factory=dict)
    golden: list[GoldenPrompt] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256")


class Pointer(BaseModel):
    active: str | None = None
    previous: str | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_durable(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.versions = self.root / "versions"
        self.staging = self.root / "staging"
        self.versions.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"invalid version name {version!r}")
        return self.versions / version

    def manifest(self, version: str) -> Manifest:
        path = self.path(version)
        if not path.is_dir():
            raise RegistryError(f"unknown version {version!r}")
        try:
            return Manifest.model_validate_json((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CorruptVersionError(f"version {version!r} has no readable manifest ({type(exc).__name__})") from exc

    def manifests(self) -> list[Manifest]:
        out = []
        for d in sorted(self.versions.iterdir()):
            with contextlib.suppress(RegistryError):
                out.append(self.manifest(d.name))
        return sorted(out, key=lambda m: m.created_at)

    def verify(self, version: str) -> Manifest:
        """Recompute every checksum; refuse a version whose files differ from its manifest."""
        manifest = self.manifest(version)
        path = self.path(version)
        if not manifest.files:
            raise CorruptVersionError(f"version {version!r}: manifest lists no files")
        present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {MANIFEST}
        missing = set(manifest.files) - present
        extra = present - set(manifest.files)
        if missing or extra:
            raise CorruptVersionError(f"version {version!r}: missing {sorted(missing)} extra {sorted(extra)}")
        for rel, digest in manifest.files.items():
            if _sha256(path / rel) != digest:
                raise CorruptVersionError(f"version {version!r}: checksum mismatch in {rel}")
        return manifest

    def pointer(self) -> Pointer:
        try:
            return Pointer.model_validate_json((self.root / POINTER).read_text())
        except FileNotFoundError:
            return Pointer()

    def active(self) -> str | None:
        return self.pointer().active

    # -- writing -----------------------------------------------------------------------------
    def next_version(self) -> str:
        n = len([d for d in self.versions.iterdir() if d.is_dir()]) + 1
        while (self.versions / f"v{n:04d}").exists():
            n += 1
        return f"v{n:04d}"

    def publish(
        self,
        src: Path,
        *,
        base_model: str,
        parent: str | None = None,
        kind: Literal["full", "lora"] = "full",
        training_config: dict[str, Any] | None = None,
        eval_results: dict[str, Any] | None = None,
        golden: Iterable[GoldenPrompt] = (),
        version: str | None = None,
        on_staged: Callable[[Path], None] | None = None,
    ) -> Manifest:
        """Copy ``src`` into a new immutable version (staging -> fsync -> rename).

        ``on_staged`` is called with the complete staging directory just before the rename
        (crash tests stop the process there)."""
        src = Path(src)
        if not src.is_dir():
            raise RegistryError(f"cannot publish {src}: not a directory")
        version = version or self.next_version()
        dest = self.path(version)
        if dest.exists():
            raise RegistryError(f"version {version!r} already exists (versions are immutable)")
        stage = self.staging / f"{version}.{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(src, stage, ignore=shutil.ignore_patterns(MANIFEST))
            files = {}
            for p in sorted(stage.rglob("*")):
                if p.is_file():
                    _fsync_file(p)
                    files[str(p.relative_to(stage))] = _sha256(p)
            manifest = Manifest(
                version=version, parent=parent, kind=kind, base_model=base_model,
                training_config=training_config or {}, eval_results=eval_results or {},
                golden=list(golden), files=files,
            )
            _write_durable(stage / MANIFEST, manifest.model_dump_json(indent=2))
            for d in [stage, *(p for p in stage.rglob("*") if p.is_dir())]:
                _fsync_dir(d)
            if on_staged is not None:
                on_staged(stage)
            os.rename(stage, dest)
            _fsync_dir(self.versions)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        return manifest

    def activate(self, version: str, *, verify: bool = True) -> Pointer:
        """Verify ``version`` and make it active; the old active becomes ``previous``.

        ``verify=False``: the caller has just verified it (the gateway's hot swap checks the
        checksums in its prepare phase, so its commit is only the pointer flip)."""
        if verify:
            self.verify(version)
        elif not self.path(version).is_dir():
            raise RegistryError(f"unknown version {version!r}")
        current = self.pointer()
        if current.active == version:
            return current
        new = Pointer(active=version, previous=current.active)
        _write_durable(self.root / POINTER, new.model_dump_json())
        return new

    def rollback(self) -> Pointer:
        """Make the previous version active again (the two swap places)."""
        current = self.pointer()
        if current.previous is None:
            raise RegistryError("no previous version to roll back to")
        return self.activate(current.previous)

    def gc(self, keep_last: int = 3, in_use: Iterable[str] = ()) -> list[str]:
        """Delete old versions; never the active, the previous, the newest ``keep_last`` or any in use."""
        pointer = self.pointer()
        protected = {pointer.active, pointer.previous, *in_use, *self.serving()}
        manifests = self.manifests()
        protected |= {m.version for m in manifests[-keep_last:]} if keep_last > 0 else set()
        removed = []
        for m in manifests:
            if m.version not in protected:
                shutil.rmtree(self.path(m.version))
                removed.append(m.version)
        return removed

    def deactivate(self) -> Pointer:
        """No registry version active (the gateway serves its configured base model); the old active
        becomes ``previous``. Used when a rollback returns to the base model."""
        current = self.pointer()
        if current.active is None:
            return current
        new = Pointer(active=None, previous=current.active)
        _write_durable(self.root / POINTER, new.model_dump_json())
        return new

    # -- versions held by running gateways (cross-process gc protection) --------------------
    def mark_serving(self, holder: str, versions: Iterable[str]) -> None:
        """Record that ``holder`` (one gateway process) has ``versions`` loaded; gc keeps them."""
        if not holder or "/" in holder or holder.startswith("."):
            raise RegistryError(f"invalid holder name {holder!r}")
        folder = self.root / "serving"
        folder.mkdir(exist_ok=True)
        _write_durable(folder / f"{holder}.json", json.dumps(sorted(set(versions))))

    def clear_serving(self, holder: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "serving" / f"{holder}.json").unlink()

    def serving(self) -> set[str]:
        """Every version some gateway marked as loaded (an unreadable marker protects nothing)."""
        out: set[str] = set()
        folder = self.root / "serving"
        if not folder.is_dir():
            return out
        for marker in folder.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                out.update(str(v) for v in json.loads(marker.read_text()))
        return out

    def clean_staging(self) -> int:
        """Remove half-written versions left by a crash; returns how many."""
        leftovers = [d for d in self.staging.iterdir() if d.is_dir()]
        for d in leftovers:
            shutil.rmtree(d, ignore_errors=True)
        return len(leftovers)
