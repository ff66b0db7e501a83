"""Turning a sandbox result into the ```output block the model reads.

Errors, timeouts, limits and truncation are stated plainly in the text, and long output is cut
in the middle (head and tail kept) with the number of characters removed, so the episode's
token budget is not spent on a wall of output.
"""

from __future__ import annotations

from sandbox.result import ExecResult, ExecStatus

_RESET_NOTE = (
    "(The interpreter was restarted; your earlier successful blocks were re-run silently before this one.)"
)
_LOST_NOTE = (
    "The interpreter restarts: your earlier successful blocks will be re-run silently before the next block, "
    "but anything this block defined is lost."
)


def clip(text: str, max_chars: int) -> str:
    """Keep the head and the tail of ``text`` within ``max_chars``, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[-tail:]}"


def _trim_traceback(stderr: str, max_lines: int = 8) -> str:
    lines = stderr.rstrip().splitlines()
    if len(lines) <= max_lines:
        return "\n".join(lines)
    return "\n".join(["Traceback (most recent call last):", "  ...", *lines[-(max_lines - 2) :]])


def format_observation(result: ExecResult, *, max_chars: int = 1200) -> str:
    """The body of the ```output block (without the fences) for one execution."""
    parts: list[str] = []
    if result.state_reset:
        parts.append(_RESET_NOTE)
    out = result.stdout.rstrip("\n")
    status = result.status
    if status is ExecStatus.ok:
        parts.append(out if out else "(no output: print() the values you want to see)")
    elif status is ExecStatus.output_truncated or result.stdout_truncated:
        parts.append(out)
        parts.append("[output truncated: the block printed too much]")
    elif status is ExecStatus.error:
        if out:
            parts.append(out)
        parts.append(_trim_traceback(result.stderr) or f"Error: {result.detail or 'the code raised an exception'}")
    elif status is ExecStatus.timeout:
        if out:
            parts.append(out)
        parts.append(f"Error: timed out after {result.wall_ms / 1000:.0f} s; the block was stopped. {_LOST_NOTE}")
    elif status is ExecStatus.cpu_limit:
        if out:
            parts.append(out)
        parts.append(f"Error: CPU time limit exceeded; the block was stopped. {_LOST_NOTE}")
    elif status is ExecStatus.memory_limit:
        if out:
            parts.append(out)
        parts.append(f"Error: memory limit exceeded; the block was stopped. {_LOST_NOTE}")
    elif status is ExecStatus.crashed:
        if out:
            parts.append(out)
        parts.append(f"Error: the interpreter crashed ({result.detail or 'killed by a signal'}). {_LOST_NOTE}")
    else:  # sandbox_error: the executor failed, not the code
        parts.append(
            f"Error: the sandbox could not run this block ({result.detail or 'executor failure'}); "
            "this is not a mistake in your code."
        )
    return clip("\n".join(p for p in parts if p), max_chars)


def output_block(body: str, *, after_fence_stop: bool) -> str:
    """The injected text. When the model's turn already ends with "```output" (a cut
    hallucinated block), only the body and the closing fence are added."""
    if after_fence_stop:
        return f"\n{body}\n```\n"
    return f"```output\n{body}\n```\n"
