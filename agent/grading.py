"""Answer extraction, answer equivalence and majority vote.

Extraction: the last ``\\boxed{...}`` (balanced braces), else the last "Final answer: ...",
and for ARC a choice letter. Equivalence: a fast path (normalised strings, numbers with
currency, thousands separators, percent signs and units stripped), then math-verify for
symbolic forms (fractions, radicals, intervals, sets, expressions).

math-verify notes: the argument order is ``verify(gold, pred)`` (it is not symmetric: gold
decides how the prediction is interpreted), and its timeouts use ``signal.alarm``, which
raises outside the main thread. So it runs here in a small process pool (its own main
thread in each worker) under our own wall-clock timeout; a worker stuck past it is killed
and the pool is rebuilt.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import math
import multiprocessing
import re
import threading
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, Field

from agent.trajectory import Mode

VERIFY_TIMEOUT_S = 10.0

# --------------------------------------------------------------------------- extraction

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FINAL_RE = re.compile(r"final answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)
_SPECIAL_RE = re.compile(r"<\|[A-Za-z_]+\|>|</s>")  # chat special tokens (<|im_end|>, <|eot_id|>, ...)
_LETTER_RE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?(?:[\s.:)\-]|$)")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    found: str | None = None
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1].strip()
    return found


def _extract_final_line(text: str) -> str | None:
    matches = _FINAL_RE.findall(text)
    if not matches:
        return None
    ans = matches[-1].strip()
    boxed = extract_boxed(ans)
    if boxed is not None:
        return boxed
    ans = ans.strip().strip("*").strip()
    if ans.startswith("$") and ans.count("$") >= 2:
        ans = ans[1 : ans.index("$", 1)]
    return ans.rstrip(".").strip() or None


def extract_letter(text: str) -> str | None:
    """An ARC choice letter from an answer string such as "(B)", "B.", "b) cells", "\\text{C}"."""
    s = text.strip()
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s).strip().strip("$*").strip()
    m = _LETTER_RE.match(s)
    return m.group(1).upper() if m else None


def extract_answer(text: str, mode: Mode | str = Mode.tir) -> str | None:
    """The final answer in a model's output, or None when it gave none."""
    mode = Mode(mode)
    text = _SPECIAL_RE.sub("\n", text)
    boxed = extract_boxed(text)
    raw = boxed if boxed is not None else _extract_final_line(text)
    if raw is None:
        return None
    if mode is Mode.arc:
        return extract_letter(raw)
    return raw


# --------------------------------------------------------------------------- normalisation

_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_UNIT_WORDS = (
    r"dollars?|cents?|units?|meters?|metres?|cm|km|mm|m|kg|g|grams?|hours?|hrs?|minutes?|mins?|seconds?|secs?|"
    r"days?|weeks?|months?|years?|miles?|feet|foot|ft|inches?|in|pounds?|lbs?|degrees?|people|students?|apples?|"
    r"eggs?|pens?|books?|cookies?|marbles?|points?|pages?|sq|square|cubic|liters?|litres?|ml|l|percent|mph|km/h"
)
_TRAILING_UNITS_RE = re.compile(rf"^(-?[\d.,/]+)\s*(?:{_UNIT_WORDS})\b.*$", re.IGNORECASE)


def normalize(ans: str) -> str:
    """A canonical string form: LaTeX spacing, \\text{}, dollars, thousands separators removed."""
    s = ans.strip()
    s = _TEXT_RE.sub(r"\1", s)
    for tok in ("\\!", "\\,", "\\;", "\\:", "\\ ", "\\left", "\\right", "\\displaystyle", "^\\circ", "^{\\circ}"):
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "").replace("$", "")
    s = s.replace("−", "-")
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 3" -> "3"
    m = _TRAILING_UNITS_RE.match(s)
    if m:
        s = m.group(1)
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)  # 1,000 -> 1000
    s = re.sub(r"\s+", "", s)
    return s.lower()


def to_number(ans: str) -> float | None:
    """A float for answers that are plainly numbers (also "3/4", "\\frac{3}{4}", "50%")."""
    s = normalize(ans)
    pct = s.endswith("\\%") or s.endswith("%")
    s = s.removesuffix("\\%").removesuffix("%")
    m = re.fullmatch(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s) or re.fullmatch(r"(-?[\d.]+)/(-?[\d.]+)", s)
    try:
        if m:
            value = float(m.group(1)) / float(m.group(2))
        elif re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", s):
            value = float(s)
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(value):
        return None
    return value / 100 if pct else value


def _numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def fast_equal(pred: str, gold: str) -> bool | None:
    """True/False when normalisation or numbers decide, None when a symbolic check is needed."""
    np_, ng = normalize(pred), normalize(gold)
    if np_ == ng:
        return True
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        if _numbers_equal(a, b):
            return True
        # "50%" vs "50": accept the percent written either way.
        pa, pb = np_.endswith("%"), ng.endswith("%")
        return pa != pb and (_numbers_equal(a * 100, b) or _numbers_equal(a, b * 100))
    return None


# --------------------------------------------------------------------------- math-verify pool


def _wrap_latex(s: str) -> str:
    return s if ("$" in s or "\\boxed" in s) else f"${s}$"


def _mv_equal(pred: str, gold: str) -> bool:
    """Runs inside a pool worker (its main thread, so math-verify's signal timeouts work)."""
    from math_verify import parse, verify

    try:
        g = parse(_wrap_latex(gold), parsing_timeout=5)
        p = parse(_wrap_latex(pred), parsing_timeout=5)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=5))  # order matters: verify(gold, pred)
    except Exception:
        return False


class _VerifyPool:
    """A lazily started process pool for math-verify, rebuilt when a worker gets stuck."""

    def __init__(self, workers: int = 2) -> None:
        self._workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                ctx = multiprocessing.get_context("spawn")  # never fork a process holding torch threads
                self._pool = concurrent.futures.ProcessPoolExecutor(self._workers, mp_context=ctx)
            return self._pool

    def _kill(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def equal(self, pred: str, gold: str, timeout: float = VERIFY_TIMEOUT_S) -> bool:
        pool = self._get()
        try:
            fut = pool.submit(_mv_equal, pred, gold)
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._kill(pool)
            return False
        except concurrent.futures.process.BrokenProcessPool:
            self._kill(pool)
            return False

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


_POOL = _VerifyPool()
atexit.register(_POOL.shutdown)


def is_equiv(pred: str | None, gold: str | None, mode: Mode | str = Mode.tir) -> bool:
    """Whether a predicted answer matches the gold answer (blocking; may use the verify pool)."""
    if pred is None or gold is None:
        return False
    if Mode(mode) is Mode.arc:
        lp, lg = extract_letter(pred) or pred.strip().upper(), extract_letter(gold) or gold.strip().upper()
        return lp == lg
    fast = fast_equal(pred, gold)
    if fast is not None:
        return fast
    return _POOL.equal(pred, gold)


async def is_equiv_async(pred: str | None, gold: str | None, mode: Mode | str = Mode.tir) -> bool:
    """:func:`is_equiv` without blocking the event loop."""
    if pred is None or gold is None:
        return False
    if Mode(mode) is not Mode.arc and fast_equal(pred, gold) is not None:
        return is_equiv(pred, gold, mode)
    return await asyncio.to_thread(is_equiv, pred, gold, mode)


# --------------------------------------------------------------------------- majority vote


class Vote(BaseModel):
    """The outcome of a majority vote over k sampled answers."""

    answer: str | None = Field(description="the most-voted answer (first seen wins ties); None if no sample answered")
    shares: dict[str, float] = Field(description="answer -> votes / k, for every distinct answer given")
    counts: dict[str, int]
    k: int = Field(description="number of samples, abstentions (no answer) included")

    @property
    def top_share(self) -> float:
        return self.shares.get(self.answer, 0.0) if self.answer is not None else 0.0


def vote_key(ans: str, mode: Mode | str = Mode.tir) -> str:
    """Answers with the same key vote together ("0.5", "1/2" and "\\frac{1}{2}" do)."""
    if Mode(mode) is Mode.arc:
        return extract_letter(ans) or ans.strip().upper()
    n = to_number(ans)
    if n is not None:
        return repr(round(n, 9))
    return normalize(ans)


def majority_vote(answers: Sequence[str | None], mode: Mode | str = Mode.tir) -> Vote:
    """Group answers by :func:`vote_key`; the representative of a group is its first answer."""
    k = len(answers)
    rep: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for a in answers:
        if a is None or not a.strip():
            continue
        key = vote_key(a, mode)
        rep.setdefault(key, a.strip())
        counts[key] += 1
    if not counts:
        return Vote(answer=None, shares={}, counts={}, k=k)
    order = list(rep)  # first-seen order breaks ties deterministically
    best = max(order, key=lambda key: (counts[key], -order.index(key)))
    return Vote(
        answer=rep[best],
        shares={rep[key]: counts[key] / k for key in order},
        counts={rep[key]: counts[key] for key in order},
        k=k,
    )
