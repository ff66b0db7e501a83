"""The registry: immutable versions, checksums, atomic pointer, retention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer.registry import CorruptVersionError, GoldenPrompt, Registry, RegistryError


def _ckpt(tmp_path: Path, name: str, payload: bytes) -> Path:
    d = tmp_path / name
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": name}))
    (d / "model.safetensors").write_bytes(payload)
    (d / "sub" / "extra.txt").write_text("x")
    return d


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_publish_records_every_checksum_and_is_immutable(reg: Registry, tmp_path: Path) -> None:
    m = reg.publish(_ckpt(tmp_path, "a", b"w" * 1000), base_model="smollm2",
                    golden=[GoldenPrompt(prompt="2+2?", expected="4")], eval_results={"acc": 0.5})
    assert m.version == "v0001"
    assert set(m.files) == {"config.json", "model.safetensors", "sub/extra.txt"}
    assert reg.verify("v0001").eval_results == {"acc": 0.5}
    assert reg.manifest("v0001").golden[0].expected == "4"
    with pytest.raises(RegistryError, match="immutable"):
        reg.publish(_ckpt(tmp_path, "b", b"z"), base_model="smollm2", version="v0001")
    assert not any(reg.staging.iterdir())


def test_corrupted_checksum_is_refused_and_active_unchanged(reg: Registry, tmp_path: Path) -> None:
    reg.publish(_ckpt(tmp_path, "a", b"a" * 100), base_model="smollm2")
    reg.activate("v0001")
    reg.publish(_ckpt(tmp_path, "b", b"b" * 100), base_model="smollm2", parent="v0001")
    weights = reg.path("v0002") / "model.safetensors"
    weights.write_bytes(b"b" * 99 + b"X")  # flip one byte
    with pytest.raises(CorruptVersionError, match=r"checksum mismatch in model\.safetensors"):
        reg.activate("v0002")
    assert reg.active() == "v0001"


def test_half_written_version_is_refused(reg: Registry, tmp_path: Path) -> None:
    reg.publish(_ckpt(tmp_path, "a", b"a"), base_model="smollm2")
    (reg.path("v0001") / "sub" / "extra.txt").unlink()  # a file vanished
    with pytest.raises(CorruptVersionError, match="missing"):
        reg.activate("v0001")
    # A directory with no manifest at all (e.g. copied in by hand) is refused too.
    (reg.versions / "v0009").mkdir()
    (reg.versions / "v0009" / "model.safetensors").write_bytes(b"?")
    with pytest.raises(CorruptVersionError, match="manifest"):
        reg.activate("v0009")
    assert reg.active() is None


def test_crash_during_publish_leaves_no_version(tmp_path: Path) -> None:
    """A publisher killed after copying but before the rename leaves only staging debris."""
    root = tmp_path / "registry"
    src = _ckpt(tmp_path, "a", b"a" * (1 << 20))
    code = textwrap.dedent(f"""
        import os, trainer.registry as r
        real = os.rename
        def die(a, b):
            os._exit(9)  # killed between fsync and rename
        r.os.rename = die
        r.Registry({str(root)!r}).publish(__import__('pathlib').Path({str(src)!r}), base_model='smollm2')
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ}, capture_output=True)
    assert proc.returncode == 9
    reg = Registry(root)
    assert reg.manifests() == [] and reg.active() is None
    assert reg.clean_staging() == 1
    assert reg.publish(src, base_model="smollm2").version == "v0001"


def test_activate_and_rollback_swap_pointer(reg: Registry, tmp_path: Path) -> None:
    for name in "abc":
        reg.publish(_ckpt(tmp_path, name, name.encode()), base_model="smollm2")
    reg.activate("v0001")
    p = reg.activate("v0002")
    assert (p.active, p.previous) == ("v0002", "v0001")
    p = reg.rollback()
    assert (p.active, p.previous) == ("v0001", "v0002")
    assert json.loads((reg.root / "pointer.json").read_text())["active"] == "v0001"
    with pytest.raises(RegistryError, match="unknown version"):
        reg.activate("v0042")
    with pytest.raises(RegistryError, match="invalid version"):
        reg.activate("../etc")


def test_gc_keeps_active_previous_and_in_use(reg: Registry, tmp_path: Path) -> None:
    for i in range(6):
        reg.publish(_ckpt(tmp_path, f"c{i}", bytes([i])), base_model="smollm2")
    reg.activate("v0001")
    reg.activate("v0002")
    removed = reg.gc(keep_last=1, in_use={"v0004"})
    assert removed == ["v0003", "v0005"]
    assert {m.version for m in reg.manifests()} == {"v0001", "v0002", "v0004", "v0006"}
