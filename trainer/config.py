"""The training configuration: one pydantic model, help on every field (shown by ``mathagent train --help``).

Defaults follow the papers where they apply to any hardware (beta 0.1, alpha 1, cosine with
10% warm-up); the learning rate default is IRPO's for full fine-tuning of a large model, so
small-model or LoRA runs should raise it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.limits import MAX_TOTAL_TOKENS
from agent.modelstore import EMBEDDED_SPEC
from sandbox.settings import STATE_DIR

LossType = Literal["dpo", "dpo+nll", "ipo", "kto", "sft", "srpo"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: Path = Field(description="pairs JSONL written by `mathagent pairs`")
    out: Path = Field(description="output directory: the HF checkpoint, curves.jsonl, resumable state")
    model: str = Field(EMBEDDED_SPEC, description="policy to start from: 'smollm2', a checkpoint directory or a hub id")
    ref_model: str | None = Field(
        None,
        description="fixed reference model spec; None = the starting policy (previous iteration, the default)",
    )
    state_dir: Path = Field(STATE_DIR, description="where model specs are cached (MATHAGENT_STATE_DIR)")
    loss: LossType = Field("dpo+nll", description="the training loss")
    beta: float = Field(0.1, gt=0, description="DPO / IPO / KTO / SRPO temperature (eta in M-DPO)")
    alpha: float = Field(
        1.0, ge=0, description="dpo+nll: NLL coefficient; srpo: weight of the self-improvement loss (convex, <= 1)"
    )
    lr: float = Field(7e-7, gt=0, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    epochs: int = Field(1, ge=1, description="passes over the pairs")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    stop_after_steps: int | None = Field(
        None, ge=1, description="end this invocation after N optimizer steps (resumable; the schedule spans the whole run)"
    )
    per_device_batch_size: int = Field(4, ge=1, description="pairs per micro-batch per process (packed in one row)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="fraction of steps of linear warm-up before the cosine decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_length: int = Field(MAX_TOTAL_TOKENS, ge=16, description="longer sequences lose their tail (never the prompt)")
    lora: bool = Field(False, description="train a LoRA adapter (PEFT), merged into the saved checkpoint")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (saves memory)")
    bf16: bool = Field(True, description="bf16 autocast on a GPU (ignored on CPU, which trains in fp32)")
    seed: int = Field(0, description="data order and initialisation seed")
    shuffle: bool = Field(True, description="shuffle the pairs each epoch (off: file order, for benchmarks)")
    save_steps: int = Field(0, ge=0, description="save resumable state every N optimizer steps (0 = only at the end)")
    resume: bool = Field(False, description="continue from <out>/state if it exists")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.loss not in LOSS_TYPES:
            raise ValueError(f"loss must be one of {', '.join(LOSS_TYPES)}, not {self.loss!r}")
        if self.loss == "srpo" and self.alpha > 1:
            raise ValueError("srpo: alpha is a convex weight and must be <= 1")
        return self
