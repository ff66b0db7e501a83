"""The graded task family: reproducible, levels as asked, train and held-out disjoint, and every
gold solution, run in the real sandbox, prints the problem's answer."""

from __future__ import annotations

import asyncio

import pytest

from agent.datasets import DatasetError
from agent.tasks import LEVELS, parse_levels, split_of, task_problems


def test_seeded_levels_and_disjoint_splits():
    train = task_problems(200, split="train", seed=3)
    heldout = task_problems(100, split="heldout", seed=3)
    assert [p.model_dump() for p in train] == [p.model_dump() for p in task_problems(200, split="train", seed=3)]
    assert [p.problem for p in train] != [p.problem for p in task_problems(200, split="train", seed=4)]
    assert not {p.problem for p in train} & {p.problem for p in heldout}
    assert len({p.problem for p in train}) == 200 and len({p.id for p in train}) == 200
    assert all(split_of(p.problem) == "train" for p in train) and all(split_of(p.problem) == "heldout" for p in heldout)
    assert [p.level for p in train[:10]] == [str(lv) for lv in LEVELS] * 2
    only = task_problems(6, split="heldout", levels=[2, 5], seed=3)
    assert {p.level for p in only} == {"2", "5"}
    # a level's problems do not depend on which other levels are asked for
    assert [p.problem for p in only if p.level == "5"] == [p.problem for p in heldout if p.level == "5"][:3]
    assert all(p.gold.lstrip("-").isdigit() and p.dataset == "tasks" and p.gold_code for p in train)
    # harder levels need more steps: more assignments / operators in the gold code
    ops = {lv: sum(p.gold_code.count(c) for p in train if p.level == str(lv) for c in "+-*/") for lv in LEVELS}  # type: ignore[union-attr]
    assert ops[1] < ops[3] < ops[5]


def test_bad_levels_are_refused_clearly():
    assert parse_levels("1-3") == [1, 2, 3] and parse_levels("2,5") == [2, 5]
    for bad in ("0-2", "x", "6", ""):
        with pytest.raises(DatasetError, match="levels must"):
            parse_levels(bad)
    with pytest.raises(DatasetError, match="levels must"):
        task_problems(3, levels=[7])
    with pytest.raises(DatasetError, match="split"):
        task_problems(3, split="test")  # type: ignore[arg-type]


def test_gold_solutions_print_the_answer_in_the_real_sandbox(tmp_path):
    from support.sandbox_service import running_sandbox

    problems = task_problems(25, split="train", seed=11) + task_problems(25, split="heldout", seed=11)

    async def main() -> list[tuple[str, str, str]]:
        async with running_sandbox(tmp_path / "sbx") as sandbox:
            results = [await sandbox.execute(p.gold_code, timeout_s=10.0) for p in problems]
        return [(p.id, p.gold, r.stdout.strip() if r.ok else f"{r.status}: {r.stderr}")
                for p, r in zip(problems, results, strict=True)]

    wrong = [(pid, gold, out) for pid, gold, out in asyncio.run(main()) if out != gold]
    assert not wrong, wrong
