"""``--seed`` changes the experiment's split (and is the training seed); ``--seeds N`` runs one
experiment per seed in its own directory and reports each, plus the orderings pooled over them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mathagent.cli import app
from trainer.experiment import experiment_config, experiment_split, seed_dirs
from trainer.experiment_claims import evaluate_claims, pool_seeds
from trainer.experiment_report import RowResult
from trainer.settings import TrainerSettings


def _ids(problems) -> list[str]:
    return [p.id for p in problems]


def test_seed_changes_the_task_split(tmp_path):
    settings = TrainerSettings(state_dir=tmp_path)
    splits = {
        s: experiment_split(experiment_config("irpo", "cpu", seed=s, train_limit=10, eval_limit=10), settings)
        for s in (0, 1)
    }
    for train, heldout in splits.values():
        assert len(train) == len(heldout) == 10 and not set(_ids(train)) & set(_ids(heldout))
    assert set(_ids(splits[0][1])) != set(_ids(splits[1][1]))
    assert set(_ids(splits[0][0])) != set(_ids(splits[1][0]))
    again = experiment_split(
        experiment_config("irpo", "cpu", seed=1, train_limit=10, eval_limit=10), settings
    )
    assert _ids(again[1]) == _ids(splits[1][1])  # reproducible


def test_seed_shuffles_a_dataset_split_and_seed_zero_keeps_the_file_order(tmp_path):
    d = tmp_path / "data" / "gsm8k"
    d.mkdir(parents=True)
    rows = [
        {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
        for i in range(30)
    ]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = TrainerSettings(state_dir=tmp_path / "state")

    def split(seed: int):
        cfg = experiment_config(
            "irpo",
            "cpu",
            dataset="gsm8k",
            data_dir=tmp_path / "data",
            seed=seed,
            train_limit=5,
            eval_limit=5,
            eval_split="train",
        )
        return experiment_split(cfg, settings)

    train0, held0 = split(0)
    assert _ids(train0) == [f"gsm8k-{i}" for i in range(5)] and _ids(held0) == [
        f"gsm8k-{i}" for i in range(25, 30)
    ]
    train1, held1 = split(1)
    assert not set(_ids(train1)) & set(_ids(held1))
    assert set(_ids(held1)) != set(_ids(held0)) and set(_ids(train1)) != set(_ids(train0))
    assert _ids(split(1)[1]) == _ids(held1)


def test_seed_dirs():
    from pathlib import Path

    assert seed_dirs(Path("r"), 0, 1) == {0: Path("r")}
    assert seed_dirs(Path("r"), 3, 2) == {3: Path("r/seed-3"), 4: Path("r/seed-4")}


def _done(name: str, greedy: dict[str, bool]) -> RowResult:
    return RowResult(name=name, label=name, status="done", greedy_by_problem=greedy)


def test_pooling_over_seeds_keys_problems_by_seed():
    # seed 0: RAFT 2 of 4, M-DPO 4 of 4; seed 1 (the same problem ids, other problems): 1 and 3 of 4
    runs = {
        0: [
            _done("raft", {"a": True, "b": True, "c": False, "d": False}),
            _done("mdpo_1", dict.fromkeys("abcd", True)),
        ],
        1: [
            _done("raft", {"a": True, "b": False, "c": False, "d": False}),
            _done("mdpo_1", {"a": True, "b": True, "c": True, "d": False}),
        ],
    }
    pooled = {r.name: r for r in pool_seeds(runs)}
    assert pooled["raft"].greedy_by_problem is not None and len(pooled["raft"].greedy_by_problem) == 8
    assert pooled["raft"].greedy_by_problem["1/a"] is True and pooled["raft"].greedy_by_problem["0/b"] is True
    assert pooled["raft"].greedy is not None and pooled["raft"].greedy.value == pytest.approx(3 / 8)
    (claim,) = evaluate_claims(list(pooled.values()))
    assert claim.comparison is not None and (
        claim.comparison.n,
        claim.comparison.only_a,
        claim.comparison.only_b,
    ) == (8, 0, 4)
    assert claim.comparison.p_value == pytest.approx(2 / 16)
    # a row not done in one seed is not pooled: the claim says which seed lacks it
    runs[1][1] = RowResult(name="mdpo_1", label="mdpo_1", status="skipped", reason="budget")
    (claim,) = evaluate_claims(pool_seeds(runs))
    assert claim.comparison is None and "seed 1" in claim.unavailable


def test_seeds_option_runs_each_seed_in_its_directory(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("MATHAGENT_STATE_DIR", str(tmp_path / "state"))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "experiment",
            "mdpo",
            "--model",
            str(tiny_model),
            "--train-limit",
            "2",
            "--eval-limit",
            "2",
            "--seed",
            "5",
            "--seeds",
            "2",
            "--budget-minutes",
            "0",
            "--run-dir",
            str(run_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    for seed in (5, 6):
        assert json.loads((run_dir / f"seed-{seed}" / "config.json").read_text())["seed"] == seed
        assert (run_dir / f"seed-{seed}" / "summary.json").is_file()
    out = " ".join(result.output.split())
    assert "seed 5; accuracy" in out and "seed 6; accuracy" in out and "pooled over seeds 5, 6" in out
    pooled = json.loads((run_dir / "paired.json").read_text())
    assert pooled and all(c["comparison"] is None for c in pooled)  # nothing ran at budget 0
    bad = CliRunner().invoke(app, ["experiment", "mdpo", "--seeds", "0", "--run-dir", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--seeds must be >= 1" in bad.output


def _gsm8k_dir(tmp_path, n_train: int = 30, n_test: int = 12):
    d = tmp_path / "data" / "gsm8k"
    d.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [
            {
                "question": f"{split} {i}: what is {i} + 1?",
                "answer": f"<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}",
            }
            for i in range(n)
        ]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "data"


def test_held_out_problems_from_the_test_split(tmp_path):
    from trainer.experiment import ExperimentError

    settings = TrainerSettings(state_dir=tmp_path / "state")
    data = _gsm8k_dir(tmp_path)

    def split(**kw):
        cfg = experiment_config("irpo", "cpu", dataset="gsm8k", data_dir=data, train_limit=5, **kw)
        return experiment_split(cfg, settings)

    train, held = split(eval_limit=4)  # the gsm8k preset: eval_split test
    assert [p.problem for p in train] == [f"train {i}: what is {i} + 1?" for i in range(5)]
    assert [p.problem for p in held] == [f"test {i}: what is {i} + 1?" for i in range(4)]
    train1, held1 = split(eval_limit=4, seed=1)
    assert {p.problem for p in held1} <= {f"test {i}: what is {i} + 1?" for i in range(12)}
    assert [p.problem for p in held1] != [p.problem for p in held] and [p.id for p in train1] != [
        p.id for p in train
    ]
    with pytest.raises(ExperimentError, match="test split has 12 problems, fewer than 13"):
        split(eval_limit=13)
    with pytest.raises(ExperimentError, match="needs gsm8k or math"):
        experiment_split(experiment_config("irpo", "cpu", dataset="synthetic", eval_split="test"), settings)
    # eval_split train: held out from the end of the train split, as before
    _, held_train = split(eval_limit=4, eval_split="train")
    assert [p.problem for p in held_train] == [f"train {i}: what is {i} + 1?" for i in range(26, 30)]
