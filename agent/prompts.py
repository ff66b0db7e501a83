"""Prompt formats: tool-integrated (default), plain chain of thought (IRPO), ARC multiple choice,
and the SRPO self-revision prompt.

The instructions live in the USER message: small models (SmolLM2-135M, Qwen2.5-0.5B) skip the
code when the instructions are only in the system prompt (models.md). The tool instructions say exactly what persists between cells, because the
sandbox keeps a session's globals like a notebook and replays the successful cells after it
loses a worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.trajectory import Mode

SYSTEM_PROMPT = "You are a careful math assistant. You solve problems step by step."

# Stop strings of a tool-integrated model turn. A ```python block ends at a fence alone on a
# line; "```output" cuts a hallucinated output block (the model must not write observations).
FENCE_CLOSE = "\n```\n"
OUTPUT_FENCE = "```output"
TIR_STOP = [OUTPUT_FENCE, FENCE_CLOSE]

# Task first, then the rules, and no worked example: with an example a small model copies it
# (its code, or its numbers) instead of solving the problem (README, "Measurements behind the design").
TIR_INSTRUCTIONS = """\
Solve the problem below with Python. Write a short ```python block that computes the answer and prints it. You will see the printed output, then write the final answer as \\boxed{{answer}}.

Problem: {problem}

Notes: variables, functions and imports persist between your python blocks, like notebook cells. If a block times out, crashes or runs out of memory, the interpreter restarts and your earlier successful blocks are re-run silently before the next one (their output is not shown again). sympy and numpy are available; there is no internet and no file access. You can run at most {max_turns} python blocks."""

# IRPO's zero-shot prompt (Pang et al. 2024), used as written.
COT_PROMPT = """\
Your task is to answer the question below. Give step by step reasoning before you answer, and when you're ready to answer, please use the format "Final answer: ..."

Question: {problem}

Solution:"""

ARC_PROMPT = """\
Your task is to answer the question below. Give step by step reasoning before you answer, and when you're ready to answer, please use the format "Final answer: (insert letter here)"

Question: {problem}

Solution:"""

REVISION_PROMPT = """\
{task}

Here is a previous attempt at this problem:
<attempt>
{attempt}
</attempt>

The attempt may contain mistakes. Check every step and every output, then write an improved, complete solution in the same format."""

REVISION_ATTEMPT_MAX_CHARS = 2000


def format_choices(question: str, choices: list[tuple[str, str]]) -> str:
    """An ARC question with its options as "(A) ..." lines."""
    return question.strip() + "\n" + "\n".join(f"({label}) {text}" for label, text in choices)


def user_message(problem: str, mode: Mode | str, *, max_turns: int = 6) -> str:
    mode = Mode(mode)
    if mode is Mode.tir:
        return TIR_INSTRUCTIONS.format(problem=problem.strip(), max_turns=max_turns)
    if mode is Mode.arc:
        return ARC_PROMPT.format(problem=problem.strip())
    return COT_PROMPT.format(problem=problem.strip())


def revision_message(problem: str, mode: Mode | str, attempt: str, *, max_turns: int = 6) -> str:
    """The SRPO self-revision prompt: the task, a previous attempt, a request to improve it."""
    attempt = attempt.strip()
    if len(attempt) > REVISION_ATTEMPT_MAX_CHARS:  # keep the end: that is where the answer is
        attempt = "...\n" + attempt[-REVISION_ATTEMPT_MAX_CHARS:]
    return REVISION_PROMPT.format(task=user_message(problem, mode, max_turns=max_turns), attempt=attempt)


def system_prompt(client_system: str | None = None) -> str:
    """Our system prompt, with a client's own system prompt (a chat request's) after it."""
    if client_system and client_system.strip():
        return f"{SYSTEM_PROMPT}\n\n{client_system.strip()}"
    return SYSTEM_PROMPT


def messages(user: str, *, system: str | None = None,
             history: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """The chat messages of an episode's prompt: the system prompt (a client's appended), the
    earlier turns of a conversation as ``(role, content)`` (oldest first), then ``user``."""
    out = [{"role": "system", "content": system_prompt(system)}]
    out.extend({"role": role, "content": content} for role, content in history)
    out.append({"role": "user", "content": user})
    return out


def stop_strings(mode: Mode | str) -> list[str]:
    return list(TIR_STOP) if Mode(mode) is Mode.tir else []
