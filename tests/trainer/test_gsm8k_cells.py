"""GSM8K rationales as verified Python cells (trainer/gsm8k_cells.py), on real lines of GSM8K's
train split, and the gold trajectory the rollouts render from them."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from agent.trajectory import Mode, SegmentKind
from sandbox.result import ExecResult, ExecStatus
from trainer.gsm8k_cells import NotConvertible, check_output, tool_solution

# real lines of gsm8k/train.jsonl (rows 0, 55, 44 and 135), the answer field verbatim
NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
    "April and May.\n#### 72"
)
ROSES = (
    "There are 25+40+35=<<25+40+35=100>>100 flowers total.\nThere are 40+35=<<40+35=75>>75 flowers that are not "
    "roses.\nTherefore, (75/100)*100=<<(75/100)*100=75>>75% of the flowers are not roses.\n#### 75"
)
JAMES = (
    "Accommodation is 15% * $1000=$<<15*.01*1000=150>>150\nFood is          30% * $1000=$<<30*.01*1000=300>>300\n"
    "Entertainment is   25% * $1000=$<<25*.01*1000=250>>250\nCoursework materials are thus $1000-($150+$300+$250) "
    "= $300\n#### 300"
)
KENNEDY = (
    "Let the number of square feet in Benedict's house be x. So, we can write the equation 4 * x + 600 = 10000.\n"
    "Subtracting 600 from both sides we get 4 * x = 9400\nDividing both sides by 4 we get x = 2350 square feet.\n"
    "#### 2350"
)


def _run(code: str) -> str:
    """What the cell prints (plain Python: the expressions are arithmetic only)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    return out.getvalue()


def test_a_rationale_becomes_reasoning_one_cell_and_the_answer():
    sol = tool_solution(NATALIA)
    assert sol.reasoning == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert sol.code == "s1 = 48/2\ns2 = 48+24\nprint(s1, s2)"
    assert [(s.expression, s.result) for s in sol.steps] == [("48/2", 24.0), ("48+24", 72.0)]
    assert sol.gold == "72"
    assert _run(sol.code) == "24.0 72\n"
    assert check_output(sol, "24.0 72\n") is None


def test_parentheses_and_percent_steps_verify():
    sol = tool_solution(ROSES)
    assert sol.code == "s1 = 25+40+35\ns2 = 40+35\ns3 = (75/100)*100\nprint(s1, s2, s3)"
    assert check_output(sol, _run(sol.code)) is None and sol.gold == "75"


def test_wrong_or_missing_output_is_caught():
    sol = tool_solution(NATALIA)
    assert check_output(sol, "24.0 73\n") == "s2 = 48+24 printed 73, the annotation says 72"
    assert check_output(sol, "24.0\n") == "printed 1 values for 2 steps"
    assert check_output(sol, "") == "printed 0 values for 2 steps"
    assert "not a number" in (check_output(sol, "24.0 seventy-two\n") or "")


def test_rationales_that_cannot_become_a_verified_cell():
    with pytest.raises(NotConvertible) as exc:
        tool_solution(JAMES)  # the answer (1000 - 700) is computed in words, not by the calculator
    assert exc.value.reason == "answer_not_the_last_step"
    with pytest.raises(NotConvertible) as exc:
        tool_solution(KENNEDY)  # algebra, no calculator annotation
    assert exc.value.reason == "no_annotation"
    with pytest.raises(NotConvertible) as exc:
        tool_solution("It is <<2+2=4>>4.")
    assert exc.value.reason == "no_final_answer"
    with pytest.raises(NotConvertible) as exc:
        tool_solution("It is <<__import__('os')=4>>4.\n#### 4")
    assert exc.value.reason == "annotation_not_arithmetic"


def _shared_gsm8k() -> Path | None:
    """gsm8k/train.jsonl in shared/ beside the checkout (or beside its parent, for a worktree)."""
    root = Path(__file__).resolve().parents[2]
    for base in (root.parent, root.parent.parent):
        path = base / "shared" / "data" / "gsm8k" / "train.jsonl"
        if path.is_file():
            return path
    return None


def test_most_of_the_train_split_converts_and_every_converted_cell_verifies():
    path = _shared_gsm8k()
    if path is None:
        pytest.skip("no shared/data/gsm8k beside the checkout")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    reasons: dict[str, int] = {}
    verified = 0
    for row in rows:
        try:
            sol = tool_solution(row["answer"])
        except NotConvertible as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
            continue
        assert check_output(sol, _run(sol.code)) is None, row
        verified += 1
    # measured: 7001 of 7473; 377 end on an answer computed in words, 95 have no annotation
    assert verified / len(rows) > 0.9, reasons
    assert set(reasons) <= {"answer_not_the_last_step", "no_annotation"}


class _PythonSandbox:
    """Runs the cell in-process (arithmetic only) or returns a scripted result; records the code."""

    def __init__(self, result: ExecResult | None = None) -> None:
        self.result = result
        self.codes: list[str] = []

    async def execute(self, code, *, session_id=None, timeout_s=None, memory_mb=None) -> ExecResult:
        self.codes.append(code)
        return self.result or ExecResult(status=ExecStatus.ok, stdout=_run(code))


async def test_the_gold_trajectory_is_the_verified_cell_in_tool_mode(tokenizer):
    from trainer.collect import IterPrompt
    from trainer.rollouts import gold_trajectory_for

    prompt = IterPrompt(
        id="gsm8k-0",
        problem="Natalia sold clips ...",
        gold="72",
        mode=Mode.tir,
        solution=NATALIA,
        dataset="gsm8k",
    )
    first = _first(tokenizer)
    sandbox = _PythonSandbox()
    traj = await gold_trajectory_for(prompt, first, tokenizer, sandbox)
    assert traj is not None and sandbox.codes == ["s1 = 48/2\ns2 = 48+24\nprint(s1, s2)"]
    kinds = [s.kind for s in traj.segments]
    assert kinds == [SegmentKind.prompt, SegmentKind.model, SegmentKind.observation, SegmentKind.model]
    assert traj.segments[1].text.startswith("Natalia sold 48/2 = 24 clips in May.")
    assert "```python\ns1 = 48/2\ns2 = 48+24\nprint(s1, s2)\n```" in traj.segments[1].text
    assert traj.segments[2].text == "```output\n24.0 72\n```\n"
    assert traj.segments[3].text == "The answer is \\boxed{72}."
    assert traj.correct is True and traj.n_tool_calls == 1 and traj.calls[0].result.stdout == "24.0 72\n"

    # output that does not match the annotations: the rationale is trained on as text, without the cell
    wrong = _PythonSandbox(ExecResult(status=ExecStatus.ok, stdout="24.0 71\n"))
    text = await gold_trajectory_for(prompt, first, tokenizer, wrong)
    assert text is not None and text.n_tool_calls == 0 and len(wrong.codes) == 1
    assert [s.kind for s in text.segments] == [SegmentKind.prompt, SegmentKind.model]
    # chain-of-thought mode never runs a cell
    cot = await gold_trajectory_for(prompt.model_copy(update={"mode": Mode.cot}), first, tokenizer, sandbox)
    assert cot is not None and cot.n_tool_calls == 0 and len(sandbox.codes) == 1


def _first(tokenizer):
    from agent.trajectory import Segment, Trajectory

    ids = list(tokenizer.encode("the prompt", add_special_tokens=False))
    return Trajectory(
        problem="p", segments=[Segment(kind=SegmentKind.prompt, text="the prompt", token_ids=ids)]
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gsm8k_warm_up_trains_on_the_verified_cells_end_to_end(tmp_path, tiny_model, monkeypatch):
    """``experiment irpo --dataset gsm8k``: the warm-up's gold trajectories are the rationales' cells,
    run in a real sandbox; the rows are measured on the test split."""
    from typer.testing import CliRunner

    from mathagent.cli import app

    for k, v in {
        "MATHAGENT_STATE_DIR": str(tmp_path / "state"),
        "MATHAGENT_DEV": "1",
        "MATHAGENT_SANDBOX_URL": f"unix://{tmp_path / 'sbx' / 'sandbox.sock'}",
    }.items():
        monkeypatch.setenv(k, v)  # no sandbox at the URL: the run starts an ephemeral one
    d = tmp_path / "data" / "gsm8k"
    d.mkdir(parents=True)
    train = [
        {
            "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
            "May. How many clips did Natalia sell altogether in April and May?",
            "answer": NATALIA,
        },
        {
            "question": "There are 25 roses in a garden. There are 40 tulips. There are 35 daisies. What percentage "
            "of flowers are not roses?",
            "answer": ROSES,
        },
    ]
    test = [
        {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
        for i in range(3)
    ]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "experiment",
            "irpo",
            "--dataset",
            "gsm8k",
            "--data-dir",
            str(tmp_path / "data"),
            "--model",
            str(tiny_model),
            "--rows",
            "sft_gold",
            "--train-limit",
            "2",
            "--eval-limit",
            "3",
            "--max-turns",
            "1",
            "--max-new-tokens",
            "16",
            "--warmup-epochs",
            "1",
            "--max-length",
            "1024",
            "--run-dir",
            str(run_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    row = json.loads((run_dir / "rows" / "sft_gold.json").read_text())
    assert row["status"] == "done" and row["pairs"] == 2
    assert sorted(row["greedy_by_problem"]) == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]  # the test split's rows
    pairs = [
        json.loads(line) for line in (run_dir / "rows" / "sft_gold" / "pairs.jsonl").read_text().splitlines()
    ]
    for p in pairs:
        mask = p["chosen"]["loss_mask"][p["chosen"]["prompt_len"] :]
        assert 0 in mask and mask[0] == 1 and mask[-1] == 1  # model, the sandbox's output (masked), model
    from agent.modelstore import load_tokenizer

    tok = load_tokenizer(tiny_model)
    text = tok.decode(pairs[0]["chosen"]["input_ids"])
    assert (
        "```python\ns1 = 48/2\ns2 = 48+24\nprint(s1, s2)\n```" in text and "```output\n24.0 72\n```" in text
    )
