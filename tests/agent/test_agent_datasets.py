"""Dataset loaders on the shared JSONL files, bad input, and the synthetic generator."""

from __future__ import annotations

import json

import pytest

from agent.datasets import DatasetError, load_file, load_problems, synthetic_problems
from agent.grading import is_equiv
from agent.trajectory import Mode


def test_gsm8k(data_dir):
    ps = load_problems("gsm8k", "test", data_dir=data_dir, limit=5)
    assert len(ps) == 5
    assert ps[0].problem.startswith("Janet") and ps[0].gold == "18"
    assert all("####" in p.solution for p in ps)
    assert len(load_problems("gsm8k", "train", data_dir=data_dir)) == 7473


def test_math_and_math500(data_dir):
    ps = load_problems("math", "test", data_dir=data_dir, limit=3)
    assert ps[0].gold == "2" and ps[0].id == "test/algebra/1.json" and ps[0].level == "Level 3"
    train = load_problems("math", "train", data_dir=data_dir, limit=3)
    assert all(p.gold for p in train) and all(p.solution is None for p in train)
    m500 = load_problems("math500", "test", data_dir=data_dir)
    assert len(m500) == 500
    assert all(p.gold for p in m500)


def test_arc(data_dir):
    ps = load_problems("arc", "test", data_dir=data_dir, limit=2)
    assert ps[0].mode is Mode.arc and ps[0].gold == "C"
    assert "\n(A) Planetary density will decrease." in ps[0].problem and "\n(D) " in ps[0].problem


def test_bad_input(tmp_path, data_dir):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_problems("mnist", data_dir=data_dir)
    with pytest.raises(DatasetError, match="no split"):
        load_problems("math500", "train", data_dir=data_dir)
    with pytest.raises(DatasetError, match="no such file"):
        load_problems("gsm8k", "test", data_dir=tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(DatasetError, match="not in the gsm8k format"):
        load_file("gsm8k", bad)
    bad.write_text("{not json\n")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_file("gsm8k", bad)


def test_synthetic_is_seeded_and_gold_code_matches(tmp_path):
    a = synthetic_problems(12, seed=3)
    assert a == synthetic_problems(12, seed=3)
    assert a != synthetic_problems(12, seed=4)
    assert {p.level for p in a} == {"easy", "medium", "hard"}
    assert len({p.problem for p in a}) == 12
    for p in a:  # the gold program, run on its own, prints the gold answer
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-c", p.gold_code], capture_output=True, text=True, check=True).stdout
        assert is_equiv(out.strip(), p.gold), (p.problem, out, p.gold)
        assert float(p.gold) >= 0
    hard = load_problems("synthetic", "hard", limit=4, seed=1)
    assert [p.level for p in hard] == ["hard"] * 4
    json.dumps([p.model_dump() for p in hard])
