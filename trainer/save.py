"""Write a trained policy as a plain, loadable Hugging Face checkpoint directory.

A LoRA adapter is saved twice: as the adapter itself in ``<out>/adapter`` (what a vLLM server
loads beside its base weights) and merged into the checkpoint, so the output never needs PEFT
to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"  # the LoRA adapter of a LoRA training, beside the merged checkpoint


def save_checkpoint(model: Any, tokenizer: Any, out_dir: Path, *, state_dict: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer into ``out_dir``; returns ``out_dir``.

    ``model`` is the unwrapped model (PEFT or plain); a PEFT adapter is saved to
    ``out_dir / ADAPTER_DIR``, then merged IN PLACE, so save any resumable state first.
    ``state_dict`` comes from ``accelerator.get_state_dict`` under FSDP / DeepSpeed, where
    parameters are sharded.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # a PEFT model: keep the adapter, then fold it into the weights
        model.save_pretrained(out_dir / ADAPTER_DIR, safe_serialization=True)
        model = model.merge_and_unload()
        state_dict = None
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def merged_model(adapter_dir: Path, base_dir: Path) -> Any:
    """The model of ``base_dir`` with the LoRA adapter ``adapter_dir`` folded into its weights."""
    from peft import PeftModel

    from agent.modelstore import load_model

    return PeftModel.from_pretrained(load_model(base_dir), str(adapter_dir)).merge_and_unload()


def merge_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path) -> Path:
    """A LoRA version as a full checkpoint: ``base_dir``'s weights with ``adapter_dir`` folded in,
    and ``base_dir``'s tokenizer (an adapter directory holds none). Written once: an existing
    ``out_dir`` is returned as is (it is written beside and renamed, so it is never partial)."""
    import shutil

    from agent.modelstore import load_tokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(merged_model(adapter_dir, base_dir), load_tokenizer(base_dir), tmp)
    tmp.rename(out_dir)
    return out_dir
