"""Gold solutions rendered as trajectories (``source="gold"``), so IRPO can add them to the winners.

The prompt segment reuses the EXACT prompt token ids the agent logged for the problem (no
re-rendering of the chat template, so the gold sequence is conditioned on the same context as
the sampled ones). The solution becomes one model segment ending with the tokenizer's
end-of-turn token (the model must learn to stop). In tool mode, when a gold python solution
exists, it becomes a python block (model), its output (observation, masked) and the final
answer (model), in the format of the agent's one-shot example (``agent/prompts.py``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agent.trajectory import EpisodeEnd, Mode, SandboxCall, Segment, SegmentKind, Source, Trajectory
from sandbox.result import ExecResult, ExecStatus

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_CALC = re.compile(r"<<[^<>]*>>")


def final_answer_line(answer: str, mode: Mode | str) -> str:
    """How the agent's graders expect a final answer to be written in each mode."""
    if Mode(mode) is Mode.tir:
        return f"The answer is \\boxed{{{answer}}}."
    return f"Final answer: {answer}"


def gsm8k_solution(answer_field: str, mode: Mode | str) -> tuple[str, str]:
    """A GSM8K ``answer`` field as (solution text, gold answer): calculator annotations
    ``<<...>>`` removed, the ``#### X`` line replaced by the mode's final-answer line."""
    body, _, gold = answer_field.rpartition("####")
    gold = gold.strip().replace(",", "")
    body = _CALC.sub("", body).strip()
    return f"{body}\n{final_answer_line(gold, mode)}", gold


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def gold_trajectory(
    tokenizer: PreTrainedTokenizerBase,
    *,
    prompt_ids: list[int],
    problem: str,
    solution: str,
    problem_id: str | None = None,
    gold: str | None = None,
    mode: Mode | str = Mode.cot,
    code: str | None = None,
    code_output: str | None = None,
    prompt_text: str = "",
) -> Trajectory:
    """Render a gold solution after ``prompt_ids`` as a correct trajectory with ``source="gold"``.

    With ``code`` (tool mode): ``solution`` is the reasoning before the block and the final
    answer line comes after the output; ``code_output`` is required then.
    """
    eot = tokenizer.eos_token_id
    if eot is None:
        raise ValueError("the tokenizer has no eos / end-of-turn token to end the gold turn with")
    segments = [Segment(kind=SegmentKind.prompt, text=prompt_text, token_ids=list(prompt_ids))]
    if code is not None:
        if code_output is None:
            raise ValueError("a gold python solution needs its output (code_output)")
        if gold is None:
            raise ValueError("a gold python solution needs the gold answer for its final line")
        first = f"{solution.strip()}\n```python\n{code.strip()}\n```\n"
        obs = f"```output\n{code_output.strip()}\n```\n"
        last = final_answer_line(gold, mode)
        segments += [
            Segment(kind=SegmentKind.model, text=first, token_ids=_encode(tokenizer, first)),
            Segment(kind=SegmentKind.observation, text=obs, token_ids=_encode(tokenizer, obs)),
            Segment(kind=SegmentKind.model, text=last, token_ids=[*_encode(tokenizer, last), eot]),
        ]
    else:
        text = solution.strip()
        segments.append(Segment(kind=SegmentKind.model, text=text, token_ids=[*_encode(tokenizer, text), eot]))
    return Trajectory(
        problem_id=problem_id,
        problem=problem,
        gold=gold,
        mode=Mode(mode),
        segments=segments,
        answer=gold,
        correct=True,
        finish_reason=EpisodeEnd.answer,
        # the gold code did run (in the sandbox, by the caller): record it like an agent's call
        calls=[] if code is None else [SandboxCall(turn=1, code=code.strip(),
                                                   result=ExecResult(status=ExecStatus.ok, stdout=code_output or ""))],
        source=Source.gold,
    )
