"""GSM8K training rationales as tool-integrated solutions (the cold start of the real-data track).

A GSM8K ``answer`` field is a worked rationale whose arithmetic carries calculator annotations,
``48/2 = <<48/2=24>>24``, ending in ``#### 72``. :func:`tool_solution` turns it into what the
agent writes: the reasoning in words (annotations removed), then one Python cell that computes
every annotated expression in order and prints each result, then the final answer. The
annotations say what each line must print, so :func:`check_output` verifies the sandbox's real
output against them before the solution is trained on (a rationale whose arithmetic does not
reproduce is not used). Pure functions: running the cell is the caller's
(:func:`trainer.rollouts.gold_trajectory_for`).

The cell keeps the rationale's literal expressions (``s2 = 48+24``) rather than substituting
earlier variables for numbers that equal earlier results: a number can equal an earlier result
by coincidence, and the annotation is exactly what the calculator computed.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, Field

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
# what GSM8K's calculator annotations contain (every one of the 23,716 in the train split)
_EXPRESSION = re.compile(r"^[0-9.+\-*/() ]+$")
REL_TOL = 1e-6


class NotConvertible(ValueError):
    """A rationale that cannot become a verified tool solution; ``reason`` says why (a count key)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class CalcStep(BaseModel):
    """One calculator annotation: the expression and the result the annotation states."""

    expression: str = Field(description="the annotated expression, e.g. 48/2")
    result: float = Field(description="the value after '=' in the annotation")
    variable: str = Field(description="the cell's variable holding it (s1, s2, ...)")


class ToolSolution(BaseModel):
    """A GSM8K rationale as the agent's tool format."""

    reasoning: str = Field(description="the rationale without its annotations and its #### line")
    code: str = Field(description="one Python cell: each step assigned, then every step's value printed")
    steps: list[CalcStep]
    gold: str = Field(description="the #### answer, commas removed")


def _number(text: str) -> float:
    return float(text.strip().replace(",", ""))


def calculator_steps(answer_field: str) -> list[CalcStep]:
    """The calculator annotations of a rationale, in order."""
    steps = []
    for i, raw in enumerate(_ANNOTATION.findall(answer_field), 1):
        expression, eq, result = raw.rpartition("=")
        expression = expression.strip()
        if not eq or not expression:
            raise NotConvertible("annotation_without_result", raw)
        if not _EXPRESSION.match(expression):
            raise NotConvertible("annotation_not_arithmetic", raw)
        try:
            value = _number(result)
        except ValueError:
            raise NotConvertible("annotation_result_not_a_number", raw) from None
        steps.append(CalcStep(expression=expression, result=value, variable=f"s{i}"))
    return steps


def tool_solution(answer_field: str) -> ToolSolution:
    """The rationale as reasoning + one Python cell + the gold answer. Raises
    :class:`NotConvertible` when it has no ``####`` answer or no annotation, an annotation is not
    plain arithmetic, or the gold answer is not the last annotation's result (the cell would
    print something other than the answer it ends with)."""
    body, sep, gold = answer_field.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not sep or not gold:
        raise NotConvertible("no_final_answer")
    steps = calculator_steps(body)
    if not steps:
        raise NotConvertible("no_annotation")
    try:
        gold_value = _number(gold)
    except ValueError:
        raise NotConvertible("final_answer_not_a_number", gold) from None
    if not math.isclose(steps[-1].result, gold_value, rel_tol=REL_TOL, abs_tol=REL_TOL):
        raise NotConvertible("answer_not_the_last_step", f"{steps[-1].result:g} vs {gold}")
    reasoning = _ANNOTATION.sub("", body).strip()
    lines = [f"{s.variable} = {s.expression}" for s in steps]
    lines.append(f"print({', '.join(s.variable for s in steps)})")
    return ToolSolution(reasoning=reasoning, code="\n".join(lines), steps=steps, gold=gold)


def check_output(solution: ToolSolution, stdout: str) -> str | None:
    """Why the cell's real output does not match the annotations (None: it does): one printed
    line with one value per step, each equal to its annotation's result."""
    fields = stdout.split()
    if len(fields) != len(solution.steps):
        return f"printed {len(fields)} values for {len(solution.steps)} steps"
    for step, field in zip(solution.steps, fields, strict=True):
        try:
            value = float(field)
        except ValueError:
            return f"{step.variable} printed {field!r}, not a number"
        if not math.isclose(value, step.result, rel_tol=REL_TOL, abs_tol=REL_TOL):
            return f"{step.variable} = {step.expression} printed {field}, the annotation says {step.result:g}"
    return None
