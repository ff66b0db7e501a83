"""``mathagent bench engine``: decoding throughput of the in-process engine, batch 1 against 8
concurrent requests, measured side by side in one run (timings on shared CPUs are noisy; the
ratio is what to read).

Each configuration runs greedy chat requests of up to ``new_tokens`` tokens; a request may end
early on ``<|im_end|>``, so the tokens actually produced are divided by the wall time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import BaseModel

QUESTIONS = [
    "Write a python function that returns the sum of the squares of 1..n, then explain it.",
    "Explain step by step how to compute 17 * 23 without a calculator.",
    "List the prime numbers below 50 and explain how you found them.",
    "Describe how to solve the equation 3x + 7 = 22, step by step.",
    "Explain what a derivative is, with two examples.",
    "Write python code that prints the first 15 Fibonacci numbers and explain it.",
    "How many minutes are in a week? Show the computation.",
    "Explain the Pythagorean theorem and give a worked example.",
]


class BenchRow(BaseModel):
    concurrency: int
    threads: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def _measure(path: Path, concurrency: int, threads: int, new_tokens: int) -> BenchRow:
    from agent.engines.base import GenerationRequest
    from agent.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine.from_path(path, threads=threads)
    try:
        prompts = [engine.chat_prefix([{"role": "user", "content": q}]) for q in QUESTIONS[:concurrency]]
        warm = GenerationRequest(prompt_ids=prompts[0], max_new_tokens=4)
        await asyncio.gather(*[engine.generate(warm) for _ in range(concurrency)])  # probe + first-call costs
        start = time.perf_counter()
        outs = await asyncio.gather(
            *[engine.generate(GenerationRequest(prompt_ids=p, max_new_tokens=new_tokens)) for p in prompts]
        )
        seconds = time.perf_counter() - start
    finally:
        await engine.aclose()
    return BenchRow(concurrency=concurrency, threads=threads, tokens=sum(len(o[0].token_ids) for o in outs), seconds=seconds)


def run(model: str, new_tokens: int = 48, threads: tuple[int, ...] = (1, 2)) -> list[BenchRow]:
    """Measure and print a table; returns the rows."""
    import os

    from rich.console import Console
    from rich.table import Table

    from agent.configuration import load
    from agent.modelstore import resolve
    from agent.settings import AgentSettings

    path = resolve(model, load(AgentSettings).state_dir).path
    console = Console()
    rows: list[BenchRow] = []
    with console.status("measuring...") as status:
        for t in threads:
            for c in (1, 8):
                status.update(f"threads={t} concurrency={c}")
                rows.append(asyncio.run(_measure(path, c, t, new_tokens)))
    base = rows[0].tokens_per_s
    table = Table(title=f"in-process engine, {model}, {new_tokens} new tokens per request "
                  f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    for col in ("threads", "concurrent requests", "tokens", "seconds", "tokens/s", "x vs threads=1 batch 1"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.threads), str(r.concurrency), str(r.tokens), f"{r.seconds:.2f}", f"{r.tokens_per_s:.1f}",
                      f"{r.tokens_per_s / base:.2f}")
    console.print(table)
    return rows
