"""Write a trained policy as a plain, loadable Hugging Face checkpoint directory.

Kept separate and simple on purpose: a versioned registry (manifests, hashes, promotion) is
built on top of this later. LoRA adapters are merged, so the output never needs PEFT to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_checkpoint(model: Any, tokenizer: Any, out_dir: Path, *, state_dict: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer into ``out_dir``; returns ``out_dir``.

    ``model`` is the unwrapped model (PEFT or plain); a PEFT adapter is merged IN PLACE, so
    save any resumable state first. ``state_dict`` comes from
    ``accelerator.get_state_dict`` under FSDP / DeepSpeed, where parameters are sharded.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # a PEFT model: fold the adapter into the weights
        model = model.merge_and_unload()
        state_dict = None
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)
    return out_dir
