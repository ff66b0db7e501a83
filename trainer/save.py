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
