"""``mathagent bench sandbox``: latency and throughput of the sandbox beside ``subprocess`` running
``python3 -c``, measured in one run on this machine, with the ratios and the issue's goals.

Other work shares the machine, so the bench prints the load average at start and end, measures every
row in several rounds and reports each row's best round beside the spread over rounds (goals are
judged on the best round; the count of rounds that met each goal is printed too). The same rows are
measured against an in-process supervisor (no HTTP) in the same rounds, so the transport's share is
the difference of the two.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.table import Table

from sandbox.local import local_service
from sandbox.result import ExecResult

PRINT = "print(1+1)"
SYMPY = 'import sympy as sp; x=sp.symbols("x"); print(sp.solve(x**2-4,x))'
POOL = 6


def _p(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def _time(n: int, fn: Callable[[], Awaitable[ExecResult]]) -> tuple[list[float], list[float]]:
    """Round-trip ms and the supervisor-measured wall ms of each execution."""
    out, walls = [], []
    for _ in range(n):
        t = time.perf_counter()
        r = await fn()
        out.append((time.perf_counter() - t) * 1000)
        if r.status not in ("ok",):
            raise RuntimeError(f"benchmark execution failed: {r.status} {r.detail}")
        walls.append(r.wall_ms)
    return out, walls


def _subprocess(code: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def _throughput(execute: Callable[[str], Awaitable[ExecResult]], callers: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await execute(SYMPY)
            if not r.ok:
                raise RuntimeError(f"benchmark execution failed: {r.status} {r.detail}")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - t0)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


async def run_bench(n: int = 200, n_subprocess_sympy: int = 10, callers: int = 4, seconds: float = 4.0,
                    rounds: int = 3) -> None:
    from sandbox.settings import SandboxSettings
    from sandbox.supervisor import Supervisor

    con = Console()
    con.print(f"[bold]sandbox bench[/]: load average at start {_load()}; {rounds} rounds; "
              f"{n} executions per latency row; throughput with {callers} concurrent callers for {seconds:g} s")
    rows: dict[str, list[tuple[float, float]]] = {}  # row -> per round (p50, p99)
    session_wall: list[float] = []  # per round: p50 of the supervisor-measured wall of a session sympy cell
    tputs: list[float] = []
    inproc_tputs: list[float] = []

    def add(name: str, ms: list[float]) -> None:
        rows.setdefault(name, []).append((statistics.median(ms), _p(ms, 0.99)))

    con.print("subprocess python3 -c ...")
    sub_print = _subprocess(PRINT, max(20, n // 5))
    sub_sympy = _subprocess(SYMPY, n_subprocess_sympy)
    with tempfile.TemporaryDirectory() as tmp:
        con.print("starting the sandbox service and an in-process supervisor ...")
        dev = SandboxSettings().dev  # MATHAGENT_DEV=1: run where a protection is missing
        async with local_service(tmp, dev=dev, pool_size=POOL) as client, \
                Supervisor(SandboxSettings(dev=dev, pool_size=POOL, max_sessions=2)) as sup:
            h = await client.health()
            con.print("protections:", h["protections"])
            http: Callable[..., Awaitable[ExecResult]] = client.execute
            local: Callable[..., Awaitable[ExecResult]] = sup.execute
            for fn in (http, local):
                for code in (PRINT, SYMPY):  # warm up
                    for _ in range(5):
                        await fn(code)
                        await fn(code, session_id="bench")
            for rnd in range(1, rounds + 1):
                con.print(f"round {rnd}/{rounds} (load {os.getloadavg()[0]:.2f}) ...")
                for label, fn in (("", http), ("in-process ", local)):
                    for row, code, sid in (("stateless print(1+1)", PRINT, None), ("stateless sympy", SYMPY, None),
                                           ("session print(1+1)", PRINT, "bench"), ("session sympy", SYMPY, "bench")):
                        ms, walls = await _time(n, functools.partial(fn, code, session_id=sid))
                        add(label + row, ms)
                        if row == "session sympy" and not label:
                            session_wall.append(statistics.median(walls))
                tputs.append(await _throughput(http, callers, seconds))
                inproc_tputs.append(await _throughput(local, callers, seconds))

    best = {k: min(v, key=lambda pr: pr[0]) for k, v in rows.items()}
    table = Table(title=f"sandbox latency, ms (best of {rounds} rounds; spread = p50 range over rounds)")
    for col, justify in (("method", "left"), ("p50", "right"), ("p99", "right"), ("p50 spread", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_row("subprocess print(1+1)", f"{statistics.median(sub_print):.2f}", f"{_p(sub_print, 0.99):.2f}",
                  f"n={len(sub_print)}")
    table.add_row("subprocess sympy", f"{statistics.median(sub_sympy):.2f}", f"{_p(sub_sympy, 0.99):.2f}",
                  f"n={len(sub_sympy)}")
    for name, per_round in rows.items():
        p50s = [pr[0] for pr in per_round]
        table.add_row(name, f"{best[name][0]:.2f}", f"{best[name][1]:.2f}", f"{min(p50s):.2f}-{max(p50s):.2f}")
    con.print(table)

    p = {k: v[0] for k, v in best.items()}
    sub_sym = statistics.median(sub_sympy)
    con.print("transport's share (HTTP over the unix socket minus the same call in-process, p50): "
              + ", ".join(f"{k} {p[k] - p['in-process ' + k]:+.2f} ms"
                          for k in ("stateless sympy", "session print(1+1)", "session sympy")))
    con.print(f"speed-up vs subprocess: print {statistics.median(sub_print) / p['stateless print(1+1)']:.1f}x, "
              f"sympy {sub_sym / p['stateless sympy']:.1f}x (stateless); sympy {sub_sym / p['session sympy']:.1f}x "
              "(session)")
    overheads = [rows["session sympy"][i][0] - session_wall[i] for i in range(rounds)]
    con.print(f"session sympy cell: round trip p50 {p['session sympy']:.2f} ms; overhead above the in-worker wall "
              f"(supervisor-measured) per round: " + ", ".join(f"{o:.2f}" for o in overheads) + " ms")
    sub_tput = 1000 / sub_sym
    con.print(f"throughput (sympy, {callers} concurrent callers, {seconds:g} s): per round "
              + ", ".join(f"{t:.1f}" for t in tputs) + " exec/s over HTTP (in-process: "
              + ", ".join(f"{t:.1f}" for t in inproc_tputs)
              + f"); subprocess {sub_tput:.1f} exec/s sequential -> {max(tputs) / sub_tput:.0f}x")
    goals = {
        "stateless sympy p50 <= 15 ms": [r[0] <= 15 for r in rows["stateless sympy"]],
        "stateless sympy >= 30x faster than subprocess": [sub_sym / r[0] >= 30 for r in rows["stateless sympy"]],
        "session cell <= 1 ms + compute": [o <= 1.0 for o in overheads],
        f">= 60 sympy executions/s ({callers} callers)": [t >= 60 for t in tputs],
    }
    for name, oks in goals.items():
        ok = any(oks)
        con.print(f"  [{'green' if ok else 'red'}]{'PASS' if ok else 'MISS'}[/] {name} "
                  f"(met in {sum(oks)}/{len(oks)} rounds)")
    con.print(f"load average at end {_load()}")


def main(n: int = 200) -> None:
    asyncio.run(run_bench(n=n))


if __name__ == "__main__":
    main()
