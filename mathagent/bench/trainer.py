"""``mathagent bench trainer``: our training step vs TRL's ``DPOTrainer``, same pairs, same model.

Each contestant runs in a FRESH subprocess (so peak memory is its own): it loads the model,
computes the reference log-probs, then trains one pass over the same single-turn pairs in the
same order (no shuffling) with sigmoid DPO, beta 0.1, the same batch size. Like for like:

- the same tokens: both tokenise ``prompt`` and ``prompt + response + eos`` the way TRL does,
  and each reports a hash of every sequence's ids and prompt length; the run fails if they
  differ;
- the same arithmetic: fp32 on both (TRL's ``DPOConfig`` defaults to ``bf16=True``, which on
  CPU autocasts to bfloat16: that, not the inputs, made its log-probs differ by 0.1-0.45 nats),
  the same optimizer (``torch.optim.AdamW``; TRL's default would be the fused kernel), no
  weight decay, clipping at 1, a cosine schedule without warm-up, the same gradient
  checkpointing setting (off unless ``--gradient-checkpointing``; non-reentrant on both), the
  same glibc allocator settings (``trainer.allocator``: ours applies them itself on CPU, and
  without them page faults dominate both);
- the same reference work: by default TRL keeps a second copy of the model and runs the
  reference forward inside every step, while ours computes the reference log-probs once before
  training. TRL is run with ``precompute_ref_log_probs=True``, its own equivalent (one pass
  before training, no reference model held while training); throughput is reported for the
  training steps alone and end to end (reference pass + training) on both sides.

Reported per contestant: real (unpadded) tokens of the sequences per second, the process's
peak resident set size (``ru_maxrss``: the RSS high-water mark of the whole process, model
load included; torch's CPU allocator keeps no peak statistic), every sequence's reference
log-prob (the same model scoring the same tokens: they must agree to ~1e-3), the mean
chosen / rejected log-probs of the first training step, and the loss of the first two steps
(step 1 is ln 2 by construction, policy = reference; step 2 follows one AdamW step at lr
1e-5, so the policy differs from the reference). TRL is a dev dependency used only here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer.allocator import MALLOC_ENV

WORDS = ["the", "of", "to", "and", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "hot", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been", "now"]


def make_pairs_text(n_pairs: int, seed: int = 0) -> list[dict[str, str]]:
    """Deterministic single-turn text pairs of varied lengths (prompts ~30-90 tokens, responses ~30-200)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [
        {"question": text(25, 80), "chosen": " " + text(25, 190), "rejected": " " + text(25, 190)} for _ in range(n_pairs)
    ]


LR = 1e-5  # large enough that step 2's loss measurably leaves ln 2


def _prompt(tokenizer: Any, question: str) -> str:
    return str(tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _inputs_hash(seqs: list[tuple[list[int], int]]) -> str:
    """Hash of every sequence's token ids and prompt length, in order (chosen, rejected per pair)."""
    return hashlib.sha256(json.dumps(seqs).encode()).hexdigest()[:16]


def run_ours(data: list[dict[str, str]], model_path: str, batch: int, gc: bool, out: Path) -> dict[str, Any]:
    from agent.modelstore import load_model, load_tokenizer
    from trainer.config import TrainConfig
    from trainer.examples import Example
    from trainer.pairs import Pair, Scheme
    from trainer.train import train

    tok = load_tokenizer(Path(model_path))
    model = load_model(Path(model_path))
    rss_loaded = _peak_rss()
    pairs, seqs = [], []
    for row in data:
        # Tokenised as TRL does: the prompt alone, then prompt + response + eos.
        prompt = _prompt(tok, row["question"])
        p_ids = tok(prompt)["input_ids"]
        exs = []
        for resp in (row["chosen"], row["rejected"]):
            full = tok(prompt + resp + tok.eos_token)["input_ids"]
            if full[: len(p_ids)] != p_ids:
                raise RuntimeError("the tokenised prompt is not a prefix of prompt + response")
            exs.append(Example(input_ids=full, loss_mask=[0] * len(p_ids) + [1] * (len(full) - len(p_ids)), prompt_len=len(p_ids)))
            seqs.append((full, len(p_ids)))
        pairs.append(Pair(problem_key=row["question"], problem=row["question"], mode="cot", scheme=Scheme.irpo, chosen=exs[0], rejected=exs[1]))
    config = TrainConfig(
        pairs=out / "unused", out=out, loss="dpo", beta=0.1, lr=LR, warmup_ratio=0.0, per_device_batch_size=batch,
        shuffle=False, gradient_checkpointing=gc, max_length=4096, progress=False,
    )
    result = train(config, model=model, tokenizer=tok, pairs=pairs)
    curves = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    return {
        "train_s": result.train_s,
        "reference_s": result.reference_s,
        "tokens": result.train_tokens,
        "losses": [c["loss"] for c in curves],
        "first_logps_chosen": curves[0]["logps_chosen"],
        "first_logps_rejected": curves[0]["logps_rejected"],
        "reference_logps": json.loads((out / "reference_logps.json").read_text()),
        "inputs": _inputs_hash(seqs),
        "peak_rss": _peak_rss(),
        "rss_after_load": rss_loaded,
    }


def run_trl(data: list[dict[str, str]], model_path: str, batch: int, gc: bool, out: Path) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from agent.modelstore import load_model, load_tokenizer

    tok = load_tokenizer(Path(model_path))
    model = load_model(Path(model_path))
    rss_loaded = _peak_rss()
    model.train()
    rows = [{"prompt": _prompt(tok, r["question"]), "chosen": r["chosen"], "rejected": r["rejected"]} for r in data]
    timing = {"reference_s": 0.0}
    losses: list[float] = []
    kept: list[dict[str, float]] = []

    class Timed(DPOTrainer):  # type: ignore[misc]
        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                timing["reference_s"] += time.perf_counter() - t0

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((result[0] if isinstance(result, tuple) else result).detach()))  # unrounded
            return result

    class Keep(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs is not None and "logps/chosen" in logs:
                kept.append(dict(logs))

    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=LR,
        beta=0.1, loss_type=["sigmoid"], max_length=4096, logging_steps=1, save_strategy="no", report_to=[],
        gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}, use_cpu=True,
        bf16=False, optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine",
        warmup_steps=0, precompute_ref_log_probs=True, precompute_ref_batch_size=batch,
        train_sampling_strategy="sequential", dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    trainer = Timed(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Keep()])
    ds = trainer.train_dataset
    seqs: list[tuple[list[int], int]] = []
    for r in ds:
        seqs += [(r["prompt_ids"] + r["chosen_ids"], len(r["prompt_ids"])), (r["prompt_ids"] + r["rejected_ids"], len(r["prompt_ids"]))]
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    return {
        "train_s": train_s,
        "reference_s": timing["reference_s"],
        "tokens": sum(len(ids) for ids, _ in seqs),
        "losses": losses,
        "first_logps_chosen": kept[0]["logps/chosen"],
        "first_logps_rejected": kept[0]["logps/rejected"],
        "reference_logps": [list(v) for v in zip(ds["ref_chosen_logps"], ds["ref_rejected_logps"], strict=True)],
        "inputs": _inputs_hash(seqs),
        "peak_rss": _peak_rss(),
        "rss_after_load": rss_loaded,
    }


def _child(args: list[str]) -> None:
    who, data_file, model_path, batch, gc, out = args
    data = json.loads(Path(data_file).read_text())
    fn = run_ours if who == "ours" else run_trl
    result = fn(data, model_path, int(batch), gc == "1", Path(out))
    print("RESULT " + json.dumps(result), flush=True)


def _contest(who: str, data_file: Path, model_path: str, batch: int, gc: bool, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mathagent.bench.trainer", who, str(data_file), model_path, str(batch), "1" if gc else "0", str(out)]
    # The same allocator settings for both (ours applies them itself on CPU; see trainer.allocator).
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **MALLOC_ENV})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{who} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def main(
    *, n_pairs: int = 16, batch_size: int = 4, model: str, gradient_checkpointing: bool = False, repeats: int = 1
) -> None:
    from rich.console import Console
    from rich.table import Table

    from agent.configuration import load
    from agent.modelstore import resolve
    from agent.settings import AgentSettings

    console = Console(width=max(110, Console().width))
    model_path = str(resolve(model, load(AgentSettings).state_dir).path)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as d:
        tmp = Path(d)
        data_file = tmp / "pairs.json"
        data_file.write_text(json.dumps(make_pairs_text(n_pairs)))
        for r in range(repeats):  # interleaved, so load from other processes hits both alike
            for who in ("ours", "trl"):
                console.print(f"[{r + 1}/{repeats}] running {who} ({n_pairs} pairs, batch {batch_size}, model {model})...")
                runs[who].append(_contest(who, data_file, model_path, batch_size, gradient_checkpointing, tmp / f"{who}{r}"))
    # the fastest end-to-end run of each (least disturbed by other load); memory: the highest seen
    res = {k: min(v, key=lambda x: x["train_s"] + x["reference_s"]) for k, v in runs.items()}
    peak = {k: max(x["peak_rss"] for x in v) for k, v in runs.items()}
    above = {k: max(x["peak_rss"] - x["rss_after_load"] for x in v) for k, v in runs.items()}
    ours, trl = res["ours"], res["trl"]
    if ours["inputs"] != trl["inputs"] or ours["tokens"] != trl["tokens"]:
        raise RuntimeError(f"the contestants trained on different tokens ({ours['inputs']} vs {trl['inputs']})")
    tps = {k: v["tokens"] / v["train_s"] for k, v in res.items()}
    e2e = {k: v["tokens"] / (v["train_s"] + v["reference_s"]) for k, v in res.items()}
    ref_diff = max(abs(a - b) for pa, pb in zip(ours["reference_logps"], trl["reference_logps"], strict=True)
                   for a, b in zip(pa, pb, strict=True))
    gib = 1024**3
    table = Table(title=f"trainer benchmark: {n_pairs} single-turn pairs, batch {batch_size}, {model}, CPU fp32, AdamW, "
                        f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}, best of {repeats}")
    for col in ("", "ours", "TRL DPOTrainer", "ours/TRL or ours-TRL"):
        table.add_column(col, justify="right")
    table.add_row("tokens/s, training steps", f"{tps['ours']:.0f}", f"{tps['trl']:.0f}", f"{tps['ours'] / tps['trl']:.2f}x")
    table.add_row("tokens/s, reference pass + training", f"{e2e['ours']:.0f}", f"{e2e['trl']:.0f}", f"{e2e['ours'] / e2e['trl']:.2f}x")
    table.add_row("reference pass (s)", f"{ours['reference_s']:.1f}", f"{trl['reference_s']:.1f}", f"{ours['reference_s'] / trl['reference_s']:.2f}x")
    table.add_row("peak RSS (GiB)", f"{peak['ours'] / gib:.2f}", f"{peak['trl'] / gib:.2f}", f"{peak['ours'] / peak['trl']:.2f}x")
    table.add_row("peak RSS above loaded model (GiB)", f"{above['ours'] / gib:.2f}", f"{above['trl'] / gib:.2f}", f"{above['ours'] / above['trl']:.2f}x")
    table.add_row("identical input tokens", ours["inputs"], trl["inputs"], "yes")
    n_seq = 2 * len(ours["reference_logps"])
    table.add_row(f"reference log-probs, {n_seq} sequences", "", "", f"max |diff| {ref_diff:.1e}")
    for key in ("first_logps_chosen", "first_logps_rejected"):
        a, b = ours[key], trl[key]
        table.add_row(f"step 1 mean {key.split('_')[-1]} log-prob", f"{a:.4f}", f"{b:.4f}", f"{a - b:+.1e}")
    for i, label in enumerate(("loss step 1 (policy = reference)", "loss step 2 (after one step)")):
        a, b = ours["losses"][i], trl["losses"][i]
        table.add_row(label, f"{a:.6f}", f"{b:.6f}", f"{a - b:+.1e}")
    table.add_row("real tokens trained", str(ours["tokens"]), str(trl["tokens"]), "")
    console.print(table)
    speed_ok, mem_ok = e2e["ours"] / e2e["trl"] >= 1.3, peak["ours"] / peak["trl"] <= 0.7
    console.print(
        "memory: ru_maxrss of a fresh subprocess per contestant (imports and model load included). "
        f"goals: >= 1.3x tokens/s end to end ({'met' if speed_ok else 'NOT met'}), "
        f"<= 0.7x peak memory ({'met' if mem_ok else 'NOT met'})."
    )


if __name__ == "__main__":
    _child(sys.argv[1:])
