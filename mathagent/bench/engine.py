"""``mathagent bench engine``: decoding throughput of the in-process engine and of a real vLLM
server on the same checkpoint, at 1, 8 and 32 concurrent requests, side by side in one run
(timings on shared CPUs are noisy; the ratios are what to read).

Each configuration sends the same greedy chat requests of up to ``new_tokens`` tokens (the
questions below, cycled); a request may end early on ``<|im_end|>``, so the tokens actually
produced are divided by the wall time. Both engines are driven through our ``Engine`` interface
(the vLLM one through ``/inference/v1/generate``, as the gateway does), so the figures include
what the gateway pays. vLLM serves fp32, like the in-process engine, so the greedy outputs
should match: the table says how many did.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

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
ENGINES = ("in-process", "vllm")


class BenchRow(BaseModel):
    engine: str
    concurrency: int
    tokens: int
    seconds: float
    outputs: list[list[int]]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def _measure(engine: Any, name: str, concurrency: int, new_tokens: int) -> BenchRow:
    from agent.engines.base import GenerationRequest

    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(concurrency)]
    prompts = [engine.chat_prefix([{"role": "user", "content": q}]) for q in questions]
    warm = GenerationRequest(prompt_ids=prompts[0], max_new_tokens=4)
    await asyncio.gather(*[engine.generate(warm) for _ in range(min(concurrency, 8))])  # first-call costs
    start = time.perf_counter()
    outs = await asyncio.gather(
        *[engine.generate(GenerationRequest(prompt_ids=p, max_new_tokens=new_tokens)) for p in prompts]
    )
    seconds = time.perf_counter() - start
    ids = [o[0].token_ids for o in outs]
    return BenchRow(
        engine=name, concurrency=concurrency, tokens=sum(map(len, ids)), seconds=seconds, outputs=ids
    )


async def _rows(
    path: Path,
    version: str,
    engines: tuple[str, ...],
    levels: tuple[int, ...],
    new_tokens: int,
    threads: int | None,
    vllm_url: str | None,
    served_name: str,
    status: Any,
) -> list[BenchRow]:
    from agent.engines.openai_http import OpenAIHTTPEngine
    from agent.engines.transformers_engine import TransformersEngine

    rows: list[BenchRow] = []
    for name in engines:
        engine: Any
        if name == "vllm":
            assert vllm_url is not None
            engine = OpenAIHTTPEngine.from_path(vllm_url, path, model=served_name, version=version)
        else:
            engine = TransformersEngine.from_path(path, version=version, threads=threads)
        try:
            for c in levels:
                status.update(f"{name}: {c} concurrent requests x {new_tokens} tokens...")
                rows.append(await _measure(engine, name, c, new_tokens))
        finally:
            await engine.aclose()
    return rows


def run(
    model: str,
    *,
    new_tokens: int = 64,
    engines: tuple[str, ...] = ENGINES,
    levels: tuple[int, ...] = (1, 8, 32),
    threads: int | None = None,
    vllm_url: str | None = None,
    vllm_model: str | None = None,
) -> list[BenchRow]:
    """Measure and print a table; returns the rows."""
    import contextlib

    from rich.console import Console
    from rich.table import Table

    from agent.configuration import load
    from agent.modelstore import resolve
    from agent.settings import AgentSettings
    from mathagent.bench.vllm import bench_vllm

    settings = load(AgentSettings)
    resolved = resolve(model, settings.state_dir)
    threads = threads or settings.torch_threads
    console = Console()
    with contextlib.ExitStack() as stack:
        server = (
            stack.enter_context(bench_vllm(resolved.path, console, url=vllm_url, served_name=vllm_model))
            if "vllm" in engines
            else None
        )
        with console.status("measuring...") as status:
            rows = asyncio.run(
                _rows(
                    resolved.path,
                    resolved.version,
                    engines,
                    levels,
                    new_tokens,
                    threads,
                    server.url if server else None,
                    server.served_name if server else "",
                    status,
                )
            )
    base = rows[0].tokens_per_s
    by = {(r.engine, r.concurrency): r for r in rows}
    table = Table(
        title=f"engines on {model} ({resolved.version}), greedy, up to {new_tokens} new tokens per request; "
        f"in-process engine on {threads or 'all'} threads"
    )
    for col in (
        "engine",
        "concurrent requests",
        "tokens",
        "seconds",
        "tokens/s",
        f"x vs {rows[0].engine} @ 1",
        "same tokens as in-process",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        ref = by.get(("in-process", r.concurrency))
        same = (
            ""
            if ref is None or r.engine == "in-process"
            else f"{sum(a == b for a, b in zip(r.outputs, ref.outputs, strict=True))}/{r.concurrency}"
        )
        table.add_row(
            r.engine,
            str(r.concurrency),
            str(r.tokens),
            f"{r.seconds:.2f}",
            f"{r.tokens_per_s:.1f}",
            f"{r.tokens_per_s / base:.2f}",
            same,
        )
    console.print(table)
    for c in levels:
        v, p = by.get(("vllm", c)), by.get(("in-process", c))
        if v and p:
            console.print(
                f"vLLM / in-process at {c} concurrent: {v.tokens_per_s / p.tokens_per_s:.2f}x tokens/s"
            )
    top, eight = by.get(("vllm", max(levels))), by.get(("in-process", 8))
    if top and eight:
        console.print(
            f"vLLM @ {top.concurrency} vs in-process @ 8: {top.tokens_per_s / eight.tokens_per_s:.2f}x tokens/s"
        )
    return rows
