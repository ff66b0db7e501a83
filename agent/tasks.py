"""The graded synthetic task family: arithmetic and word problems at difficulty levels 1-5, each
with a known answer and a gold Python solution, split into disjoint train and held-out sets.

Why another generator next to :func:`agent.datasets.synthetic_problems`: experiments need a
difficulty ladder (a small model can be measured where it is neither at 0% nor at 100%) and a
held-out split that can never share a problem with the training split, whatever the sizes
and seeds. Levels (steps = arithmetic operations the solution needs):

1. one step: a sum or a difference, as a bare expression or a one-sentence story;
2. two steps: buy-and-give-away, or a product;
3. three steps: packs of items, some given away, some received;
4. four steps: weekly earnings, a percentage saved, a purchase from the savings;
5. five or more steps: three people's amounts related by "times as many" / "fewer than",
   pooled and shared equally.

Every answer is an integer by construction. The answer is computed here from the numbers,
independently of the gold code (a test runs each gold solution in the real sandbox and checks
that it prints the answer). The split of a problem is a function of its text alone (a CRC32
bucket), so train and held-out are disjoint by construction; duplicates are dropped.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

from agent.datasets import DatasetError, Problem

LEVELS = (1, 2, 3, 4, 5)
Split = Literal["train", "heldout"]
HELDOUT_BUCKETS = 5  # one text in HELDOUT_BUCKETS is held out
DATASET = "tasks"

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mo", "Nia"]
_ITEMS = ["pens", "apples", "stickers", "books", "marbles", "cookies", "cards", "shells", "stamps", "beads"]

# (text, gold python, answer)
Generated = tuple[str, str, int]


def _level1(rng: random.Random) -> Generated:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", f"print({a} + {b})", a + b
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = max(a, b), min(a, b)
    return (f"{who} has {a} {item} and gives {b} of them to a friend. How many {item} does {who} have left?",
            f"have = {a}\ngiven = {b}\nprint(have - given)", a - b)


def _level2(rng: random.Random) -> Generated:
    if rng.random() < 0.5:
        a, b = rng.randint(3, 25), rng.randint(3, 19)
        item = rng.choice(_ITEMS)
        return (f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?",
                f"boxes = {a}\nper_box = {b}\nprint(boxes * per_box)", a * b)
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(1, 20)
    return (f"{who} has {a} {item}. {who} buys {b} more and then gives away {c}. "
            f"How many {item} does {who} have now?",
            f"start = {a}\nbought = {b}\ngiven = {c}\nprint(start + bought - given)", a + b - c)


def _level3(rng: random.Random) -> Generated:
    who, friend, item = *rng.sample(_NAMES, 2), rng.choice(_ITEMS)
    packs, per, received = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 15)
    given = rng.randint(1, packs * per - 1)
    text = (f"{who} buys {packs} packs of {item} with {per} {item} in each pack, gives {given} {item} away and "
            f"then gets {received} {item} from {friend}. How many {item} does {who} have now?")
    code = (f"packs = {packs}\nper_pack = {per}\ngiven = {given}\nreceived = {received}\n"
            "print(packs * per_pack - given + received)")
    return text, code, packs * per - given + received


def _level4(rng: random.Random) -> Generated:
    who = rng.choice(_NAMES)
    weekly, weeks, pct = 20 * rng.randint(1, 6), rng.randint(3, 12), rng.choice([10, 20, 25, 50])
    saved = weekly * weeks * pct // 100  # weekly is a multiple of 20, so this is exact
    cost = rng.randint(1, saved - 1)
    text = (f"{who} earns ${weekly} each week for {weeks} weeks, saves {pct}% of the earnings and then spends "
            f"${cost} of the savings on a gift. How many dollars of savings are left?")
    code = (f"earned = {weekly} * {weeks}\nsaved = earned * {pct} // 100\nleft = saved - {cost}\nprint(left)")
    return text, code, saved - cost


def _level5(rng: random.Random) -> Generated:
    a, b, c = rng.sample(_NAMES, 3)
    item = rng.choice(_ITEMS)
    x, k, m = rng.randint(4, 30), rng.randint(2, 5), rng.randint(2, 6)
    base = x + 2 * k * x  # the pool before c's shortfall d is taken away
    choices = [d for d in range(1, k * x) if (base - d) % m == 0]
    d = rng.choice(choices)
    total = base - d
    text = (f"{a} has {x} {item}. {b} has {k} times as many {item} as {a}. {c} has {d} fewer {item} than {b}. "
            f"They put all their {item} together and share them equally among {m} children. "
            f"How many {item} does each child get?")
    code = (f"a = {x}\nb = {k} * a\nc = b - {d}\ntotal = a + b + c\nchildren = {m}\nprint(total // children)")
    return text, code, total // m


_GENERATORS: dict[int, Callable[[random.Random], Generated]] = {
    1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5,
}


def split_of(text: str) -> Split:
    """The split a problem text belongs to (a function of the text alone)."""
    return "heldout" if zlib.crc32(text.encode()) % HELDOUT_BUCKETS == 0 else "train"


def task_problems(n: int, *, split: Split = "train", levels: Sequence[int] = LEVELS, seed: int = 0) -> list[Problem]:
    """``n`` problems of ``split``, levels taken in turn from ``levels``, reproducible from ``seed``.

    Each level draws from its own random stream, so the problems of one level do not change when
    other levels are added or removed."""
    if split not in ("train", "heldout"):
        raise DatasetError(f"unknown split {split!r}: use train or heldout")
    bad = [lv for lv in levels if lv not in _GENERATORS]
    if bad or not levels:
        raise DatasetError(f"levels must be among {', '.join(map(str, LEVELS))}, not {list(levels)!r}")
    rngs = {lv: random.Random(f"tasks-{seed}-{lv}") for lv in levels}
    seen: set[str] = set()
    out: list[Problem] = []
    for i in range(n):
        lv = levels[i % len(levels)]
        for _ in range(100_000):
            text, code, answer = _GENERATORS[lv](rngs[lv])
            if text not in seen and split_of(text) == split:
                break
        else:  # pragma: no cover - every level has far more than n distinct texts
            raise DatasetError(f"level {lv} ran out of distinct {split} problems")
        seen.add(text)
        out.append(Problem(id=f"{DATASET}-L{lv}-{zlib.crc32(text.encode()):08x}", problem=text, gold=str(answer),
                           gold_code=code, dataset=DATASET, level=str(lv)))
    return out


def parse_levels(text: str) -> list[int]:
    """``"1,2,3"`` or ``"1-3"`` -> [1, 2, 3]; a clear error for anything else."""
    try:
        if "-" in text:
            lo, hi = (int(t) for t in text.split("-", 1))
            levels = list(range(lo, hi + 1))
        else:
            levels = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DatasetError(f"levels must look like 1,2,3 or 1-5, not {text!r}") from None
    if not levels or any(lv not in _GENERATORS for lv in levels):
        raise DatasetError(f"levels must be among {', '.join(map(str, LEVELS))}, not {text!r}")
    return levels
