"""Model specs: the embedded default, local directories, hub ids, and tiny test models."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from agent import modelstore

STATE = Path(os.environ.get("MATHAGENT_STATE_DIR", "~/.cache/mathagent")).expanduser()


@pytest.fixture(scope="module")
def embedded() -> modelstore.ResolvedModel:
    return modelstore.resolve("smollm2", STATE)


def test_embedded_is_cached_as_safetensors(embedded: modelstore.ResolvedModel) -> None:
    assert (embedded.path / "model.safetensors").is_file()
    assert (embedded.path / "config.json").is_file()
    t0 = time.perf_counter()
    again = modelstore.resolve("smollm2", STATE)
    assert again == embedded  # same path, same version
    assert time.perf_counter() - t0 < 5, "the second resolve must reuse the cache, not convert again"


def test_embedded_gguf_comes_from_the_package() -> None:
    path = modelstore.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_local_directory_spec(tmp_path: Path, embedded: modelstore.ResolvedModel) -> None:
    tok = modelstore.load_tokenizer(embedded.path)
    model = modelstore.tiny_random_model(tok, seed=1)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    resolved = modelstore.resolve(str(tmp_path / "ckpt"), STATE)
    assert resolved.path == (tmp_path / "ckpt").resolve()
    reloaded = modelstore.load_model(resolved.path)
    ids = torch.tensor([tok.encode("What is 2+3?")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    # A different checkpoint gets a different version id.
    other = modelstore.tiny_random_model(tok, seed=2, layers=3)
    other.save_pretrained(tmp_path / "ckpt2")
    assert modelstore.resolve(str(tmp_path / "ckpt2"), STATE).version != resolved.version


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(modelstore.ModelSpecError, match=r"no config\.json"):
        modelstore.resolve(str(tmp_path), STATE)


@pytest.mark.parametrize("spec", ["", "not a model", "a/b/c"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(modelstore.ModelSpecError, match="MATHAGENT_MODEL"):
        modelstore.resolve(spec, STATE)


def test_tiny_model_shares_the_tokenizer(embedded: modelstore.ResolvedModel) -> None:
    tok = modelstore.load_tokenizer(embedded.path)
    model = modelstore.tiny_random_model(tok)
    assert model.config.vocab_size == len(tok)
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
