"""Answer extraction, equivalence (a table of pairs, right and wrong) and majority vote."""

from __future__ import annotations

import threading

import pytest

from agent.grading import extract_answer, extract_boxed, is_equiv, is_equiv_async, majority_vote
from agent.trajectory import Mode

# (prediction, gold, equal?)
PAIRS: list[tuple[str, str, bool]] = [
    # integers, separators, currency, units
    ("8", "8", True),
    ("8.0", "8", True),
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("$8", "8", True),
    ("\\$8", "8", True),
    ("8 dollars", "8", True),
    ("8 \\text{ dollars}", "8", True),
    ("\\text{8 cm}", "8", True),
    ("18 hours", "18", True),
    ("5 cm", "5", True),
    ("-3", "-3", True),
    ("x = 3", "3", True),
    ("9", "8", False),
    ("80", "8", False),
    ("-8", "8", False),
    ("8 dollars", "9", False),
    ("1,001", "1000", False),
    # fractions and decimals
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "\\dfrac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("3/4", "0.75", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("0.333", "\\frac{1}{3}", False),
    ("2/3", "0.6667", False),
    # percentages
    ("50\\%", "50", True),
    ("50%", "50", True),
    ("50\\%", "0.5", True),
    ("25%", "25", True),
    ("40%", "50%", False),
    # LaTeX expressions
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("2x+2", "2(x+1)", True),
    ("\\pi", "\\pi", True),
    ("2\\pi", "\\pi", False),
    ("x^2+1", "x^2-1", False),
    ("3^{\\circ}", "3", True),
    ("\\left(3, 4\\right)", "(3,4)", True),
    # intervals and sets
    ("[1,2)", "[1,2)", True),
    ("(1,2]", "[1,2]", False),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(-\\infty,3]", "(-\\infty,3)", False),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1,2,3\\}", "\\{1,2\\}", False),
    ("(3,4)", "(4,3)", False),
    # text answers
    ("\\text{Monday}", "Monday", True),
    ("monday", "Monday", True),
    ("Tuesday", "Monday", False),
    ("7", "\\frac{7}{2}", False),
    ("\\sqrt{3}", "3", False),
    ("12 pens", "13", False),
    ("", "0", False),
    # letters (ARC)
    ("B", "B", True),
    ("(B)", "B", True),
    ("b", "B", True),
    ("\\text{(C)}", "C", True),
    ("C. cells", "C", True),
    ("A", "B", False),
    ("(D)", "C", False),
]
LETTER_ROWS = range(len(PAIRS) - 7, len(PAIRS))


def test_table_is_big_enough():
    assert len(PAIRS) >= 60
    assert sum(not e for _, _, e in PAIRS) >= 20


@pytest.mark.parametrize(("i", "pred", "gold", "expected"), [(i, *row) for i, row in enumerate(PAIRS)])
def test_equivalence_table(i, pred, gold, expected):
    mode = Mode.arc if i in LETTER_ROWS else Mode.tir
    assert is_equiv(pred, gold, mode) is expected, (pred, gold)


def test_none_is_never_equal():
    assert is_equiv(None, "3") is False
    assert is_equiv("3", None) is False


async def test_symbolic_check_off_the_main_thread():
    # math-verify's signal timeouts fail outside the main thread; the pool makes it work anyway
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.append(is_equiv("\\sqrt{12}", "2\\sqrt{3}")))
    t.start()
    t.join(60)
    assert results == [True]
    assert await is_equiv_async("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2") is True


@pytest.mark.parametrize(
    ("text", "mode", "answer"),
    [
        ("so \\boxed{\\frac{1}{2}} is it", Mode.tir, "\\frac{1}{2}"),
        ("first \\boxed{3}, then \\boxed{4}", Mode.tir, "4"),
        ("\\boxed{\\{1,2\\}}", Mode.tir, "\\{1,2\\}"),
        ("\\boxed{x^{2}}", Mode.tir, "x^{2}"),
        ("\\fbox{7}", Mode.tir, "7"),
        ("Reasoning...\nFinal answer: 42.", Mode.cot, "42"),
        ("Final answer: $\\frac{3}{4}$", Mode.cot, "\\frac{3}{4}"),
        ("final answer is: 12 pens", Mode.cot, "12 pens"),
        ("Final answer: 8<|im_end|>", Mode.cot, "8"),
        ("Final answer: (B)", Mode.arc, "B"),
        ("Final answer: C. the moon", Mode.arc, "C"),
        ("Final answer: \\boxed{D}", Mode.arc, "D"),
        ("I think it is 5", Mode.tir, None),
        ("\\boxed{unclosed", Mode.tir, None),
        ("Final answer: maybe", Mode.arc, None),
    ],
)
def test_extraction(text, mode, answer):
    assert extract_answer(text, mode) == answer


def test_extract_boxed_nested():
    assert extract_boxed("\\boxed{\\frac{a}{\\sqrt{b}}}") == "\\frac{a}{\\sqrt{b}}"


def test_majority_vote_groups_equivalent_answers():
    v = majority_vote(["1/2", "0.5", "\\frac{1}{2}", "3", None, "3"])
    assert v.answer == "1/2"
    assert v.k == 6
    assert v.counts == {"1/2": 3, "3": 2}
    assert v.shares == {"1/2": 0.5, "3": pytest.approx(1 / 3)}
    assert v.top_share == 0.5

    tie = majority_vote(["7", "8"])
    assert tie.answer == "7"  # first seen wins a tie
    empty = majority_vote([None, None])
    assert empty.answer is None and empty.shares == {} and empty.k == 2

    letters = majority_vote(["(B)", "B", "C"], Mode.arc)
    assert letters.answer == "(B)" and letters.counts["(B)"] == 2
