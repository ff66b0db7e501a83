"""The training run on HF Accelerate: one GPU, DDP, FSDP or DeepSpeed come from ``accelerate launch``.

Per run: load the policy, build items from the pairs, compute the reference log-probs ONCE
(the starting policy by default, i.e. the previous iteration; a fixed base model with
``ref_model``) and keep them with the data, so no reference model is held while training;
then AdamW with cosine schedule and warm-up, gradient accumulation and clipping. Every
micro-batch is one packed forward pass for all its sequences (chosen and rejected together).
Per optimizer step, the curves of the IRPO paper (chosen / rejected log-probs, margin, reward
accuracy, NLL) go to ``<out>/curves.jsonl``. The result is a loadable checkpoint in ``<out>``.

Data parallelism is done here, not by a DataLoader: every process derives the same seeded
order, and process ``r`` takes its slice of each global micro-batch, so a run with P
processes and batch B/P sees exactly the batches of one process with batch B.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from trainer.allocator import keep_freed_memory
from trainer.attention import packed_attention
from trainer.config import TrainConfig
from trainer.examples import pack, packed_logps
from trainer.items import TrainItem, build_items, items_loss

STATE = "state"
CURVES = "curves.jsonl"
REFERENCE = "reference_logps.json"


class TrainResult(BaseModel):
    out: Path
    steps: int
    items: int
    item_counts: dict[str, int]
    first_loss: float | None
    last: dict[str, float]
    reference_s: float
    train_s: float
    train_tokens: int
    tokens_per_s: float
    peak_memory_bytes: int | None = None


def micro_batches(n_items: int, config: TrainConfig, world: int) -> list[list[int]]:
    """Global micro-batches (each ``per_device_batch_size * world`` item indices) over all
    epochs; a last incomplete global micro-batch is dropped so every process does the same work."""
    size = config.per_device_batch_size * world
    out: list[list[int]] = []
    for epoch in range(config.epochs):
        order = list(range(n_items))
        if config.shuffle:
            random.Random(config.seed + epoch).shuffle(order)
        out += [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
    return out


@torch.inference_mode()
def compute_reference(model: Any, items: list[TrainItem], accelerator: Any, *, batch_items: int) -> None:
    """Fill ``item.ref_logps`` with ``model``'s log-probs (one packed forward per chunk),
    sharded over processes and gathered, so each process ends with all of them."""
    from accelerate.utils import gather_object

    was_training = model.training
    model.eval()
    mine = list(range(accelerator.process_index, len(items), accelerator.num_processes))
    results: list[tuple[int, list[float]]] = []
    for start in range(0, len(mine), batch_items):
        idx = mine[start : start + batch_items]
        seqs = [s for i in idx for s in items[i].sequences]
        per = len(items[idx[0]].sequences)
        batch = pack(seqs, group_size=per).to(accelerator.device)
        with accelerator.autocast():
            logps, _ = packed_logps(model, batch)
        values = logps.float().view(len(idx), per).tolist()
        results += list(zip(idx, values, strict=True))
    if accelerator.num_processes > 1:
        results = gather_object(results)
    for i, v in results:
        items[i].ref_logps = v
    model.train(was_training)


def _load_policy(config: TrainConfig) -> tuple[Any, Any, str]:
    from agent.modelstore import load_model, load_tokenizer, resolve

    resolved = resolve(config.model, config.state_dir)
    return load_model(resolved.path), load_tokenizer(resolved.path), resolved.version


def train(config: TrainConfig, *, model: Any = None, tokenizer: Any = None, pairs: list[Any] | None = None) -> TrainResult:
    """Run training. ``model`` / ``tokenizer`` / ``pairs`` may be passed in (tests); otherwise
    they come from ``config.model`` and ``config.pairs``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from trainer.io import read_pairs

    use_bf16 = config.bf16 and torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no")
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    set_seed(config.seed)
    if model is None or tokenizer is None:
        model, tokenizer, _ = _load_policy(config)
    if pairs is None:
        pairs = read_pairs(config.pairs)
    # Packed attention for the whole run: gradient checkpointing recomputes layers in backward.
    with packed_attention(model):
        return _train(config, accelerator, model, tokenizer, pairs)


def _train(config: TrainConfig, accelerator: Any, model: Any, tokenizer: Any, pairs: list[Any]) -> TrainResult:
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from trainer.save import save_checkpoint

    items, item_counts = build_items(pairs, config.loss, max_length=config.max_length, tokenizer=tokenizer)
    if not items:
        raise ValueError(f"no trainable items in {config.pairs} ({item_counts})")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    # Reference log-probs, once, stored with the data (and on disk for a resumed run).
    t0 = time.perf_counter()
    ref_file = out / REFERENCE
    if config.resume and ref_file.is_file():
        stored = json.loads(ref_file.read_text())
        for it, v in zip(items, stored, strict=True):
            it.ref_logps = v
    else:
        model.to(accelerator.device)
        if config.ref_model is None:
            compute_reference(model, items, accelerator, batch_items=config.per_device_batch_size)
        else:
            from agent.modelstore import load_model, resolve

            ref = load_model(resolve(config.ref_model, config.state_dir).path).to(accelerator.device)
            compute_reference(ref, items, accelerator, batch_items=config.per_device_batch_size)
            del ref
        if accelerator.is_main_process:
            ref_file.write_text(json.dumps([it.ref_logps for it in items]))
    reference_s = time.perf_counter() - t0

    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()

    schedule = micro_batches(len(items), config, accelerator.num_processes)
    accum = config.gradient_accumulation_steps
    total_steps = math.ceil(len(schedule) / accum)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps) if schedule else 0
        schedule = schedule[: total_steps * accum]
    if total_steps == 0:
        raise ValueError(
            f"{len(items)} items are fewer than one global micro-batch "
            f"({config.per_device_batch_size} x {accelerator.num_processes} processes)"
        )

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it
    # once per process), and saved with the state.
    accelerator.register_for_checkpointing(scheduler)

    step = 0
    state_dir = out / STATE
    if config.resume and (state_dir / "progress.json").is_file():
        accelerator.load_state(str(state_dir))
        step = json.loads((state_dir / "progress.json").read_text())["step"]

    rank, pd = accelerator.process_index, config.per_device_batch_size
    curves = out / CURVES
    if accelerator.is_main_process and step == 0 and curves.exists():
        curves.unlink()
    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and accelerator.is_main_process), desc="train")
    first_loss: float | None = None
    last: dict[str, float] = {}
    train_tokens = 0
    t_train = time.perf_counter()
    stop_at = total_steps if config.stop_after_steps is None else min(total_steps, step + config.stop_after_steps)
    while step < stop_at:
        group = schedule[step * accum : (step + 1) * accum]
        sums: dict[str, torch.Tensor] = {}
        tokens = torch.zeros((), device=accelerator.device)
        for m, global_batch in enumerate(group):
            local = [items[i] for i in global_batch[rank * pd : (rank + 1) * pd]]
            batch = pack([s for it in local for s in it.sequences], group_size=len(local[0].sequences))
            batch = batch.to(accelerator.device)
            sync = m == len(group) - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
            with ctx:
                with accelerator.autocast():
                    logps, n_tok = packed_logps(model, batch)
                loss, metrics = items_loss(logps, n_tok, local, loss=config.loss, beta=config.beta, alpha=config.alpha)
                accelerator.backward(loss / len(group))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v.float() / len(group)
            tokens += batch.n_sequence_tokens
        grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        reduced = {k: accelerator.reduce(v, reduction="mean").item() for k, v in sums.items()}
        step_tokens = int(accelerator.reduce(tokens, reduction="sum").item())
        train_tokens += step_tokens
        record = {
            "step": step,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens": step_tokens,
            **reduced,
        }
        last = {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
        if first_loss is None:
            first_loss = reduced["loss"]
        if accelerator.is_main_process:
            with curves.open("a") as f:
                f.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{reduced['loss']:.4f}", margin=f"{reduced['margin']:.3f}")
        if config.save_steps and step % config.save_steps == 0 and step < stop_at:
            _save_state(accelerator, state_dir, step)
    bar.close()
    train_s = time.perf_counter() - t_train

    accelerator.wait_for_everyone()
    if config.save_steps or step < total_steps:  # before the checkpoint: saving merges a LoRA adapter in place
        _save_state(accelerator, state_dir, step)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        save_checkpoint(accelerator.unwrap_model(model), tokenizer, out, state_dict=state_dict)
    accelerator.wait_for_everyone()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    result = TrainResult(
        out=out,
        steps=step,
        items=len(items),
        item_counts=item_counts,
        first_loss=first_loss,
        last=last,
        reference_s=reference_s,
        train_s=train_s,
        train_tokens=train_tokens,
        tokens_per_s=train_tokens / train_s if train_s > 0 else 0.0,
        peak_memory_bytes=peak,
    )
    if accelerator.is_main_process:
        (out / "train_result.json").write_text(result.model_dump_json(indent=2))
    return result


def _save_state(accelerator: Any, state_dir: Path, step: int) -> None:
    accelerator.save_state(str(state_dir))
    if accelerator.is_main_process:
        (state_dir / "progress.json").write_text(json.dumps({"step": step}))
    accelerator.wait_for_everyone()
