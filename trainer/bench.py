"""``mathagent bench trainer``: our training step vs TRL's ``DPOTrainer``, same pairs, same model.

Each contestant runs in a FRESH subprocess (so peak memory is its own): it loads the model,
trains one pass over the same single-turn pairs in the same order (no shuffling) with sigmoid
DPO, beta 0.1, the same batch size, and reports its training wall time, the real (unpadded)
tokens it processed, its first-step loss and mean chosen / rejected log-probs, and the
process's peak resident set size (``ru_maxrss``: the RSS high-water mark of the whole
process, model load included; torch's CPU allocator keeps no peak statistic). Both use their
defaults otherwise, except gradient checkpointing, which is set the same on both (TRL's default
is on; pass ``--gradient-checkpointing`` for that). TRL is a dev dependency used only here.

Our throughput is reported twice: training steps only (the reference log-probs are computed
once per iteration and stored with the data, by design) and end to end including that
reference pass; TRL runs its reference forward inside every step.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = ["the", "of", "to", "and", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "hot", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been", "now"]


def make_pairs_text(n_pairs: int, seed: int = 0) -> list[dict[str, str]]:
    """Deterministic single-turn text pairs of varied lengths (prompts ~30-90 tokens, responses ~30-200)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [
        {"question": text(25, 80), "chosen": " " + text(25, 190), "rejected": " " + text(25, 190)} for _ in range(n_pairs)
    ]


def _prompt(tokenizer: Any, question: str) -> str:
    return str(tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_ours(data: list[dict[str, str]], model_path: str, batch: int, gc: bool, out: Path) -> dict[str, Any]:
    from agent.modelstore import load_model, load_tokenizer
    from trainer.config import TrainConfig
    from trainer.examples import Example
    from trainer.pairs import Pair, Scheme
    from trainer.train import train

    tok = load_tokenizer(Path(model_path))
    model = load_model(Path(model_path))
    pairs = []
    for row in data:
        # Tokenised exactly as TRL does: the prompt alone, then prompt + response + eos.
        prompt = _prompt(tok, row["question"])
        p_ids = tok(prompt)["input_ids"]
        exs = []
        for resp in (row["chosen"], row["rejected"]):
            full = tok(prompt + resp + tok.eos_token)["input_ids"]
            assert full[: len(p_ids)] == p_ids
            exs.append(Example(input_ids=full, loss_mask=[0] * len(p_ids) + [1] * (len(full) - len(p_ids)), prompt_len=len(p_ids)))
        pairs.append(Pair(problem_key=row["question"], problem=row["question"], mode="cot", scheme=Scheme.irpo, chosen=exs[0], rejected=exs[1]))
    rss_loaded = _peak_rss()
    config = TrainConfig(
        pairs=out / "unused", out=out, loss="dpo", beta=0.1, lr=1e-6, per_device_batch_size=batch, shuffle=False,
        gradient_checkpointing=gc, max_length=4096, progress=False,
    )
    result = train(config, model=model, tokenizer=tok, pairs=pairs)
    first = json.loads((out / "curves.jsonl").read_text().splitlines()[0])
    return {
        "train_s": result.train_s,
        "reference_s": result.reference_s,
        "tokens": result.train_tokens,
        "first_loss": first["loss"],
        "first_logps_chosen": first["logps_chosen"],
        "first_logps_rejected": first["logps_rejected"],
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
    model.train()
    rows = [{"prompt": _prompt(tok, r["question"]), "chosen": r["chosen"], "rejected": r["rejected"]} for r in data]
    tokens = 0
    for r in rows:
        for resp in (r["chosen"], r["rejected"]):
            tokens += len(tok(r["prompt"] + resp + tok.eos_token)["input_ids"])
    kept: list[dict[str, float]] = []

    class Keep(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs is not None:
                kept.append(dict(logs))

    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=1e-6,
        beta=0.1, loss_type=["sigmoid"], max_length=4096, logging_steps=1, save_strategy="no", report_to=[],
        gradient_checkpointing=gc, use_cpu=True, train_sampling_strategy="sequential", dataloader_num_workers=0,
        disable_tqdm=True, lr_scheduler_type="cosine", warmup_steps=0.1,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Keep()])
    rss_loaded = _peak_rss()
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    first = next(entry for entry in kept if "loss" in entry)
    return {
        "train_s": train_s,
        "tokens": tokens,
        "first_loss": first["loss"],
        "first_logps_chosen": first.get("logps/chosen"),
        "first_logps_rejected": first.get("logps/rejected"),
        "peak_rss": _peak_rss(),
        "rss_after_load": rss_loaded,
    }


def _child(args: list[str]) -> None:
    who, data_file, model_path, batch, gc, out = args
    data = json.loads(Path(data_file).read_text())
    fn = run_ours if who == "ours" else run_trl
    result = fn(data, model_path, int(batch), gc == "1", Path(out))
    print("RESULT " + json.dumps(result), flush=True)


def _contest(who: str, data_file: Path, model_path: str, batch: int, gc: bool, tmp: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "trainer.bench", who, str(data_file), model_path, str(batch), "1" if gc else "0", str(tmp / who)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{who} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def main(*, n_pairs: int = 16, batch_size: int = 4, model: str = "smollm2", gradient_checkpointing: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from agent.modelstore import resolve
    from trainer.config import _default_state_dir

    console = Console()
    model_path = str(resolve(model, _default_state_dir()).path)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as d:
        tmp = Path(d)
        data_file = tmp / "pairs.json"
        data_file.write_text(json.dumps(make_pairs_text(n_pairs)))
        results = {}
        for who in ("ours", "trl"):
            console.print(f"running {who} ({n_pairs} pairs, batch {batch_size}, model {model})...")
            results[who] = _contest(who, data_file, model_path, batch_size, gradient_checkpointing, tmp)
    ours, trl = results["ours"], results["trl"]
    tps = {k: v["tokens"] / v["train_s"] for k, v in results.items()}
    tps_e2e = ours["tokens"] / (ours["train_s"] + ours["reference_s"])
    gib = 1024**3
    table = Table(title=f"trainer benchmark: {n_pairs} single-turn pairs, batch {batch_size}, {model}, CPU fp32, "
                        f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}")
    for col in ("", "ours", "TRL DPOTrainer", "ratio ours/TRL"):
        table.add_column(col, justify="right")
    table.add_row("tokens/s (training steps)", f"{tps['ours']:.0f}", f"{tps['trl']:.0f}", f"{tps['ours'] / tps['trl']:.2f}x")
    table.add_row("tokens/s incl. our reference pass", f"{tps_e2e:.0f}", f"{tps['trl']:.0f}", f"{tps_e2e / tps['trl']:.2f}x")
    table.add_row("peak RSS (GiB)", f"{ours['peak_rss'] / gib:.2f}", f"{trl['peak_rss'] / gib:.2f}", f"{ours['peak_rss'] / trl['peak_rss']:.2f}x")
    table.add_row("peak RSS - RSS after load (GiB)", f"{(ours['peak_rss'] - ours['rss_after_load']) / gib:.2f}",
                  f"{(trl['peak_rss'] - trl['rss_after_load']) / gib:.2f}",
                  f"{(ours['peak_rss'] - ours['rss_after_load']) / max(1, trl['peak_rss'] - trl['rss_after_load']):.2f}x")
    table.add_row("first-step loss", f"{ours['first_loss']:.6f}", f"{trl['first_loss']:.6f}", f"{ours['first_loss'] - trl['first_loss']:+.1e}")
    for key in ("first_logps_chosen", "first_logps_rejected"):
        a, b = ours[key], trl[key]
        table.add_row(key.replace("_", " "), f"{a:.4f}", "n/a" if b is None else f"{b:.4f}", "" if b is None else f"{a - b:+.1e}")
    table.add_row("real tokens trained", str(ours["tokens"]), str(trl["tokens"]), "")
    console.print(table)
    console.print(
        "memory: ru_maxrss of a fresh subprocess per contestant (whole-process RSS high-water mark, imports and model "
        "load included). goals: >= 1.3x tokens/s, <= 0.7x peak memory."
    )


if __name__ == "__main__":
    _child(sys.argv[1:])
