"""``mathagent bench sandbox``: latency and throughput of the sandbox beside ``subprocess`` running
``python3 -c``, measured in one run on this machine, with the ratios and the issue's goals."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.table import Table

from sandbox.client import SandboxClient
from sandbox.testing import running_sandbox

PRINT = "print(1+1)"
SYMPY = 'import sympy as sp; x=sp.symbols("x"); print(sp.solve(x**2-4,x))'


def _stats(ms: list[float]) -> tuple[float, float]:
    s = sorted(ms)
    return statistics.median(s), s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


async def _time(n: int, fn: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _subprocess(code: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def _throughput(client: SandboxClient, callers: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await client.execute(SYMPY)
            if not r.ok:
                raise RuntimeError(f"benchmark execution failed: {r.status} {r.detail}")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - t0)


async def run_bench(n: int = 200, n_subprocess_sympy: int = 10, callers: int = 4, seconds: float = 5.0) -> None:
    con = Console()
    with tempfile.TemporaryDirectory() as tmp:
        con.print("[bold]starting the sandbox service...")
        async with running_sandbox(tmp, pool_size=4) as client:
            h = await client.health()
            con.print("protections:", h["protections"])
            for code in (PRINT, SYMPY):  # warm up
                await client.execute(code)
                await client.execute(code, session_id="bench")
            rows: dict[str, list[float]] = {}
            with con.status("subprocess python3 -c ..."):
                rows["subprocess print(1+1)"] = _subprocess(PRINT, max(20, n // 5))
                rows["subprocess sympy"] = _subprocess(SYMPY, n_subprocess_sympy)
            with con.status("sandbox, stateless ..."):
                rows["stateless print(1+1)"] = await _time(n, lambda: client.execute(PRINT))
                rows["stateless sympy"] = await _time(n, lambda: client.execute(SYMPY))
            with con.status("sandbox, session cells ..."):
                rows["session print(1+1)"] = await _time(n, lambda: client.execute(PRINT, session_id="bench"))
                rows["session sympy"] = await _time(n, lambda: client.execute(SYMPY, session_id="bench"))
                cpu = []
                for _ in range(50):
                    r = await client.execute(SYMPY, session_id="bench")
                    cpu.append(r.wall_ms)
            with con.status(f"throughput, {callers} concurrent callers, {seconds:g} s ..."):
                tput = await _throughput(client, callers, seconds)
                sub_tput = 1000 / statistics.median(rows["subprocess sympy"])

        with con.status("in-process supervisor (no HTTP), for the transport's share ..."):
            from sandbox.settings import SandboxSettings
            from sandbox.supervisor import Supervisor

            async with Supervisor(SandboxSettings(dev=True, pool_size=4, max_sessions=2)) as sup:
                for code in (PRINT, SYMPY):
                    await sup.execute(code)
                    await sup.execute(code, session_id="b")
                rows["in-process stateless sympy"] = await _time(n, lambda: sup.execute(SYMPY))
                rows["in-process session print(1+1)"] = await _time(n, lambda: sup.execute(PRINT, session_id="b"))
                rows["in-process session sympy"] = await _time(n, lambda: sup.execute(SYMPY, session_id="b"))

    table = Table(title="sandbox latency (ms, client round trip over the unix socket)")
    table.add_column("method")
    table.add_column("n", justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    for name, ms in rows.items():
        p50, p99 = _stats(ms)
        table.add_row(name, str(len(ms)), f"{p50:.2f}", f"{p99:.2f}")
    con.print(table)
    p = {k: _stats(v)[0] for k, v in rows.items()}
    sess_compute = statistics.median(cpu)
    con.print(f"speed-up vs subprocess: print {p['subprocess print(1+1)'] / p['stateless print(1+1)']:.1f}x, "
              f"sympy {p['subprocess sympy'] / p['stateless sympy']:.1f}x (stateless); "
              f"sympy {p['subprocess sympy'] / p['session sympy']:.1f}x (session)")
    con.print(f"session sympy cell: round trip p50 {p['session sympy']:.2f} ms, of which in-worker wall "
              f"{sess_compute:.2f} ms -> overhead {p['session sympy'] - sess_compute:.2f} ms")
    con.print(f"throughput (sympy, {callers} callers): {tput:.1f} exec/s vs subprocess {sub_tput:.1f} exec/s "
              f"(sequential) -> {tput / sub_tput:.1f}x")
    goals = [
        ("stateless sympy p50 <= 15 ms", p["stateless sympy"] <= 15),
        ("stateless sympy >= 30x faster than subprocess", p["subprocess sympy"] / p["stateless sympy"] >= 30),
        ("session cell <= 1 ms + compute", p["session sympy"] - sess_compute <= 1.0),
        (">= 60 sympy executions/s", tput >= 60),
    ]
    for name, ok in goals:
        con.print(f"  [{'green' if ok else 'red'}]{'PASS' if ok else 'MISS'}[/] {name}")


def main(n: int = 200) -> None:
    asyncio.run(run_bench(n=n))


if __name__ == "__main__":
    main()
