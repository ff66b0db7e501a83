"""Printing a solve for people: the model's turns, its code, the sandbox output, the answer and grade."""

from __future__ import annotations

import re

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from agent.events import SolveResult
from agent.trajectory import SegmentKind, Trajectory

_CODE_RE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)(?:\n?```|$)", re.DOTALL)
_SPECIAL_RE = re.compile(r"<\|[A-Za-z_]+\|>")


def _model_parts(text: str) -> list[Text | Syntax]:
    parts: list[Text | Syntax] = []
    text = _SPECIAL_RE.sub("", text)
    pos = 0
    for m in _CODE_RE.finditer(text):
        if text[pos : m.start()].strip():
            parts.append(Text(text[pos : m.start()].strip()))
        parts.append(Syntax(m.group(1), "python", theme="ansi_dark", line_numbers=False))
        pos = m.end()
    rest = text[pos:].removesuffix("output").strip()
    if rest:
        parts.append(Text(rest))
    return parts


def render_trajectory(traj: Trajectory, console: Console, title: str = "trajectory") -> None:
    body: list[Text | Syntax | Panel] = []
    for seg in traj.segments:
        if seg.kind is SegmentKind.model:
            body.extend(_model_parts(seg.text))
        elif seg.kind is SegmentKind.observation:
            out = seg.text.strip().removeprefix("```output").removesuffix("```").strip("\n")
            body.append(Panel(Text(out), title="output", border_style="yellow", expand=False))
    grade = {True: "[green]correct[/]", False: "[red]wrong[/]", None: "[dim]not graded[/]"}[traj.correct]
    footer = (
        f"answer: [bold]{escape(str(traj.answer))}[/]  {grade}  finish: {traj.finish_reason}  "
        f"tool calls: {traj.n_tool_calls}  tokens: {len(traj.token_ids())}  "
        f"time: {traj.timings.total_ms / 1000:.1f}s  version: {traj.model_version}"
    )
    body.append(Text.from_markup(footer))
    console.print(Panel(Group(*body), title=title, border_style="cyan"))


def render_result(result: SolveResult, console: Console) -> None:
    for i, traj in enumerate(result.trajectories):
        label = f"trajectory {i + 1}/{len(result.trajectories)} {traj.id[:8]}"
        if traj.parent_id:
            label += f" (revision of {traj.parent_id[:8]})"
        render_trajectory(traj, console, label)
    line = f"[bold]answer: {escape(str(result.answer))}[/]"
    if result.correct is not None:
        line += f"  ({'[green]correct[/]' if result.correct else '[red]wrong[/]'}, gold {escape(str(result.gold))})"
    if result.vote is not None:
        shares = ", ".join(f"{escape(a)}: {s:.0%}" for a, s in result.vote.shares.items())
        line += f"\nvotes over {result.vote.k} samples: {shares}"
    console.print(line)
