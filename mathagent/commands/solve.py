"""``mathagent solve``: one problem through the agent, shown live (or printed as JSON).

The model's text streams line by line as it is generated; each ```python block is highlighted
as it is written and its sandbox output appears in a panel as soon as the cell has run; the
answer, the grade and the episode's numbers follow. With several samples their events are
interleaved, so each cell and answer is one line tagged with its sample, then the vote.

Every expected failure (bad settings, unknown model, no sandbox, bad arguments) ends with one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from agent.configuration import load
from agent.events import (
    AnswerEvent,
    CodeCell,
    EpisodeDone,
    EpisodeStart,
    SandboxOutput,
    SolveDone,
    SolveResult,
    TextDelta,
)
from agent.observation import format_observation
from agent.runtime import Resources
from agent.settings import AgentSettings
from mathagent.errors import fail

_FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")
_SPECIAL = re.compile(r"<\|[A-Za-z_]+\|>")
_GRADE = {True: "[green]correct[/]", False: "[red]wrong[/]", None: "[dim]not graded[/]"}


class LivePrinter:
    """Prints a solve's events as they arrive (one sample in full; several as tagged lines)."""

    def __init__(self, console: Console, *, several: bool) -> None:
        self.console = console
        self.several = several
        self.line = ""
        self.in_code = False
        self.cells = 0

    def _tag(self, ev: EpisodeStart | TextDelta | CodeCell | SandboxOutput | AnswerEvent | EpisodeDone) -> str:
        rev = f" rev {ev.revision}" if ev.revision else ""
        return f"[cyan]\\[sample {ev.sample + 1}{rev}][/] " if self.several else ""

    def _print_line(self, line: str) -> None:
        fence = _FENCE.match(line)
        if fence and not self.in_code and fence.group(1) in ("", "python", "py", "python3"):
            self.in_code = True
            self.cells += 1
            self.console.rule(f"[cyan]python · cell {self.cells}[/]", align="left", style="cyan")
        elif fence and self.in_code:
            self.in_code = False
        elif line.strip() == "```output":
            return  # a hallucinated output block, cut by the loop
        elif self.in_code:
            self.console.print(Syntax(line, "python", theme="ansi_dark", background_color="default"))
        else:
            self.console.print(Text(line))

    def _flush(self) -> None:
        if self.line:
            self._print_line(self.line)
            self.line = ""
        self.in_code = False

    def event(self, ev: object) -> None:
        c = self.console
        if isinstance(ev, EpisodeStart):
            if ev.revision and not self.several:
                self._flush()
                c.rule(f"revision {ev.revision}", style="magenta")
        elif isinstance(ev, TextDelta) and not self.several:
            self.line += _SPECIAL.sub("", ev.text)
            *done, self.line = self.line.split("\n")
            for line in done:
                self._print_line(line)
        elif isinstance(ev, CodeCell):
            self._flush()
            if self.several:
                first = ev.code.strip().splitlines()[0] if ev.code.strip() else ""
                c.print(f"{self._tag(ev)}cell {ev.turn + 1}: [dim]{escape(first[:80])}[/]")
        elif isinstance(ev, SandboxOutput):
            r = ev.result
            head = f"{r.status} · {r.wall_ms:.0f} ms"
            if self.several:
                out = format_observation(r).strip().splitlines()
                c.print(f"{self._tag(ev)}  -> {head}: {escape(out[-1][:100] if out else '')}")
            else:
                style = "yellow" if str(r.status) == "ok" else "red"
                c.print(Panel(Text(format_observation(r)), title=f"output · {head}", title_align="left",
                              border_style=style, expand=False))
        elif isinstance(ev, AnswerEvent):
            self._flush()
            c.print(f"{self._tag(ev)}answer: [bold]{escape(str(ev.answer))}[/]  {_GRADE[ev.correct]}")
        elif isinstance(ev, EpisodeDone) and not self.several:
            t = ev.trajectory
            c.print(f"[dim]finish: {t.finish_reason}  tool calls: {t.n_tool_calls}  tokens: {len(t.token_ids())}  "
                    f"time: {t.timings.total_ms / 1000:.1f}s  version: {t.model_version}  trajectory {t.id[:8]}[/]")

    def result(self, result: SolveResult) -> None:
        if not self.several:
            return
        line = f"[bold]answer: {escape(str(result.answer))}[/]"
        if result.correct is not None:
            line += f"  ({_GRADE[result.correct]}, gold {escape(str(result.gold))})"
        if result.vote is not None:
            shares = ", ".join(f"{escape(a)}: {s:.0%}" for a, s in result.vote.shares.items())
            line += f"\nvotes over {result.vote.k} samples: {shares}"
        self.console.print(line)


async def _solve(problem: str, gold: str | None, samples: int, revisions: int, mode: str, max_turns: int | None,
                 temperature: float | None, seed: int | None, as_json: bool) -> int:
    settings = load(AgentSettings)
    err = Console(stderr=True)
    async with Resources(settings) as res:
        with err.status("loading the model and the sandbox..."):
            engine = await res.engine()
            sandbox = await res.sandbox()
            tlog = await res.trajectory_log()
        try:
            solver = res.solver(engine, sandbox, tlog)
            kwargs = {"gold": gold, "mode": mode, "samples": samples, "revisions": revisions, "max_turns": max_turns,
                      "temperature": temperature, "seed": seed, "source": "api"}
            if as_json:
                print((await solver.solve(problem, **kwargs)).model_dump_json())  # type: ignore[arg-type]
                return 0
            err.print(f"[dim]{res.sandbox_note}; model {settings.model} ({engine.model_version})[/]")
            printer = LivePrinter(Console(), several=samples > 1)
            result: SolveResult | None = None
            stream = solver.stream(problem, **kwargs, stream_text=True)  # type: ignore[arg-type]
            async with contextlib.aclosing(stream):
                async for ev in stream:
                    if isinstance(ev, SolveDone):
                        result = ev.result
                    else:
                        printer.event(ev)
            assert result is not None
            printer.result(result)
            spooled = len(tlog.spooled())
            where = f"spooled locally ({spooled} waiting for Redis)" if spooled else f"logged to {settings.redis_url}"
            err.print(f"[dim]{len(result.trajectories)} trajectories {where}[/]")
        finally:
            await engine.aclose()
    return 0


def run_solve(problem: str, *, gold: str | None, samples: int, revisions: int, mode: str, max_turns: int | None,
              temperature: float | None, seed: int | None, as_json: bool) -> int:
    from agent.modelstore import ModelSpecError
    from agent.runtime import SandboxStartError
    from agent.solver import SolveError

    try:
        return asyncio.run(_solve(problem, gold, samples, revisions, mode, max_turns, temperature, seed, as_json))
    except (ModelSpecError, SolveError, SandboxStartError) as exc:
        return fail(str(exc))
