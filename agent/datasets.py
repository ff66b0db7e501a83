"""Problem sets: GSM8K, MATH / MATH500, ARC-Challenge (JSONL files or the Hugging Face hub), and a
seeded synthetic generator of arithmetic word problems with known answers and gold Python.

Every loader returns :class:`Problem` records with a gold answer in the form the grader
compares: GSM8K the number after ``####`` (commas removed), MATH the ``answer`` field (else the
last ``\\boxed{}`` of the solution), ARC the answer letter with the options appended to the
question as "(A) ..." lines.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from agent.grading import extract_boxed
from agent.prompts import format_choices
from agent.trajectory import Mode

DATASETS = ("gsm8k", "math", "math500", "arc", "synthetic")

# name -> (folder under the data dir, file per split)
_FILES: dict[str, tuple[str, dict[str, str]]] = {
    "gsm8k": ("gsm8k", {"train": "train.jsonl", "test": "test.jsonl"}),
    "math": ("math", {"train": "train.jsonl", "test": "test.jsonl"}),
    "math500": ("math", {"test": "math500_test.jsonl"}),
    "arc": ("arc_challenge", {"train": "train.jsonl", "test": "test.jsonl"}),
}
# name -> (hub id, config, split map) for machines with a network
_HUB: dict[str, tuple[str, str | None]] = {
    "gsm8k": ("openai/gsm8k", "main"),
    "math": ("EleutherAI/hendrycks_math", None),
    "math500": ("HuggingFaceH4/MATH-500", None),
    "arc": ("allenai/ai2_arc", "ARC-Challenge"),
}


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message says why and what to do."""


class Problem(BaseModel):
    id: str
    problem: str = Field(description="the text shown to the model (ARC: with its options)")
    gold: str
    mode: Mode = Mode.tir
    solution: str | None = Field(None, description="a gold solution text, where the data set has one")
    gold_code: str | None = Field(None, description="a gold Python solution (synthetic problems)")
    dataset: str
    level: str | None = None


def gsm8k_gold(answer_text: str) -> str:
    return answer_text.split("####")[-1].strip().replace(",", "")


def _from_row(name: str, row: dict[str, Any], i: int) -> Problem:
    if name == "gsm8k":
        return Problem(
            id=f"gsm8k-{i}", problem=row["question"], gold=gsm8k_gold(row["answer"]),
            solution=row["answer"], dataset=name,
        )
    if name in ("math", "math500"):
        gold = row.get("answer") or extract_boxed(row.get("solution", "")) or ""
        if not gold:
            raise DatasetError(f"{name} row {i} has neither an answer nor a boxed solution")
        return Problem(
            id=str(row.get("unique_id") or row.get("source_unique_id") or f"{name}-{i}"), problem=row["problem"],
            gold=str(gold), solution=row.get("solution"), dataset=name,
            level=None if row.get("level") is None else str(row["level"]),
        )
    if name == "arc":
        choices = row["choices"]
        return Problem(
            id=str(row.get("id") or f"arc-{i}"),
            problem=format_choices(row["question"], list(zip(choices["label"], choices["text"], strict=True))),
            gold=str(row["answerKey"]), mode=Mode.arc, dataset=name,
        )
    raise DatasetError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{n}: not valid JSON ({exc.msg})") from None


def load_file(name: str, path: Path, *, limit: int | None = None) -> list[Problem]:
    """Load a JSONL file in the named data set's format."""
    if not Path(path).is_file():
        raise DatasetError(f"{path}: no such file")
    out: list[Problem] = []
    for i, row in enumerate(read_jsonl(Path(path))):
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(_from_row(name, row, i))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path} row {i}: not in the {name} format ({exc})") from None
    return out


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now ("offline by HF_HUB_OFFLINE", "unreachable"),
    or None: one TCP connect, so an offline machine learns it in seconds, not after retries."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline ({var} is set)"
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"unreachable ({host}:{port}: {type(exc).__name__})"
    return None


def _load_hub(name: str, split: str, limit: int | None) -> list[Problem]:
    hub_id, config = _HUB[name]
    offline = hub_unreachable()
    if offline:  # the hub library would retry for half a minute; read only its local cache instead
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ[var] = "1"
        for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
            if module in sys.modules:
                setattr(sys.modules[module], attr, True)
    try:
        import datasets as hf

        ds = hf.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # offline machines fail in many ways; one clear line is what matters
        why = f"the Hugging Face hub is {offline} and there is no cached copy" if offline else (
            f"the Hugging Face hub failed ({type(exc).__name__}); no network?")
        raise DatasetError(f"{name}: no local copy (pass --data-dir with {_FILES[name][0]}/ inside) and {why}") from exc
    rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
    if name == "arc":
        return [_from_row(name, dict(r), i) for i, r in enumerate(rows)]
    if name == "math":
        return [_from_row(name, {**dict(r), "unique_id": f"math-{split}-{i}"}, i) for i, r in enumerate(rows)]
    return [_from_row(name, dict(r), i) for i, r in enumerate(rows)]


def load_problems(
    name: str, split: str = "test", *, data_dir: Path | None = None, limit: int | None = None, seed: int = 0
) -> list[Problem]:
    """Load ``limit`` problems of a data set: from ``data_dir`` when it has the file, else the hub.

    ``synthetic`` generates problems (``seed``; split ``easy``/``medium``/``hard`` or any
    other value for a mix).
    """
    if name == "synthetic":
        level = split if split in LEVELS else None
        return synthetic_problems(limit or 20, seed=seed, level=level)
    if name not in _FILES:
        raise DatasetError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    folder, files = _FILES[name]
    if split not in files:
        raise DatasetError(f"{name} has no split {split!r}: use one of {', '.join(files)}")
    if data_dir is not None:
        path = Path(data_dir).expanduser() / folder / files[split]
        if path.is_file():
            return load_file(name, path, limit=limit)
        raise DatasetError(f"{path}: no such file (expected {folder}/{files[split]} under the data dir)")
    return _load_hub(name, split, limit)


# --------------------------------------------------------------------------- synthetic

LEVELS = ("easy", "medium", "hard")
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
_ITEMS = ["pens", "apples", "stickers", "books", "marbles", "cookies", "cards", "shells"]


def _easy(rng: random.Random) -> tuple[str, str]:
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(1, 20)
    text = f"{who} has {a} {item}. {who} buys {b} more and then gives away {c}. How many {item} does {who} have now?"
    return text, f"start = {a}\nbought = {b}\ngiven = {c}\nprint(start + bought - given)"


def _medium(rng: random.Random) -> tuple[str, str]:
    item = rng.choice(_ITEMS)
    per, price, n_groups = rng.randint(2, 6), rng.randint(1, 9), rng.randint(2, 12)
    n = per * n_groups
    text = f"A shop sells {item} at {per} for ${price}. How many dollars do {n} {item} cost?"
    return text, f"per_group = {per}\nprice = {price}\ncount = {n}\nprint(count // per_group * price)"


def _hard(rng: random.Random) -> tuple[str, str]:
    who = rng.choice(_NAMES)
    weekly, weeks, pct = rng.randint(10, 90), rng.randint(3, 12), rng.choice([10, 20, 25, 50])
    cost = rng.randint(1, max(1, int(weekly * weeks * pct / 100) - 1))  # the savings never go negative
    text = (
        f"{who} earns ${weekly} each week for {weeks} weeks. {who} saves {pct}% of the earnings and then spends "
        f"${cost} of the savings on a gift. How many dollars of savings are left?"
    )
    code = f"earned = {weekly} * {weeks}\nsaved = earned * {pct} / 100\nleft = saved - {cost}\nprint(left)"
    return text, code


_GENERATORS = {"easy": _easy, "medium": _medium, "hard": _hard}


def _run_gold(code: str) -> str:
    """The answer a gold solution prints: the generator's code is ours and arithmetic only."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<gold>", "exec"), {})
    out = buf.getvalue().strip()
    value = float(out)
    return str(int(value)) if value.is_integer() else out


def synthetic_problems(n: int, *, seed: int = 0, level: str | None = None) -> list[Problem]:
    """``n`` arithmetic word problems with known answers and gold Python, reproducible from ``seed``."""
    if level is not None and level not in _GENERATORS:
        raise DatasetError(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lv = level or LEVELS[i % len(LEVELS)]
        text, code = _GENERATORS[lv](rng)
        out.append(
            Problem(id=f"synthetic-{seed}-{i}", problem=text, gold=_run_gold(code), gold_code=code,
                    dataset="synthetic", level=lv)
        )
    return out
