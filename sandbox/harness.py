"""What runs inside an isolated worker: execute cells, report the outcome, trim tracebacks.

Cells run in one ``__main__``-like namespace (a session keeps it between cells). Like a notebook, the
value of a trailing expression is printed when it is not None. Tracebacks keep only frames of the
user's cells (``<cell N>``): no harness frames, no library frames with host paths.
The worker's result classification is decided by the supervisor from outside; the "done" message
sent here only says whether the cell raised (hostile code can forge it, which only lies about itself).
"""

from __future__ import annotations

import ast
import builtins
import io
import linecache
import socket
import sys
import traceback
import types

from sandbox import protocol


def _keep_cell_frames(te: traceback.TracebackException) -> None:
    seen: set[int] = set()
    cur: traceback.TracebackException | None = te
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cur.stack = traceback.StackSummary.from_list(
            [f for f in cur.stack if f.filename.startswith("<cell ")]
        )
        if (cur.exc_type is not None and issubclass(cur.exc_type, SyntaxError) and cur.filename
                and not cur.filename.startswith("<cell ")):
            cur.filename = "<library>"
        cur = cur.__cause__ or cur.__context__


def format_user_traceback(exc: BaseException) -> str:
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    _keep_cell_frames(te)
    return "".join(te.format())


def _compile_cell(code: str, filename: str) -> tuple[types.CodeType, types.CodeType | None]:
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expr = tree.body.pop()
        assert isinstance(expr, ast.Expr)
        last = compile(ast.Expression(expr.value), filename, "eval")
    return compile(tree, filename, "exec"), last


def run_cell(code: str, cell_no: int, namespace: dict) -> tuple[bool, str | None]:
    """Execute one cell; returns (raised, exception type name)."""
    filename = f"<cell {cell_no}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        body, last = _compile_cell(code, filename)
        exec(body, namespace)
        if last is not None:
            value = eval(last, namespace)
            if value is not None:
                print(repr(value))
    except SystemExit as e:
        if e.code in (None, 0):
            return False, None
        _report(e)
        return True, "SystemExit"
    except BaseException as e:
        _report(e)
        return True, type(e).__name__
    return False, None


def _report(exc: BaseException) -> None:
    """Write the user's traceback to stderr, best effort: the cell may have closed or replaced its own
    stderr (``os.close(2)``), and a failed write here must never escape into the serve loop, which
    would then never send its "done" message and the supervisor would have to kill the worker."""
    try:
        text = format_user_traceback(exc)
    except BaseException:
        text = f"{type(exc).__name__}\n"
    try:
        sys.stderr.write(text)
    except BaseException:
        pass


# Typical first steps of a math cell, used to learn which pages a cell touches (see ``prefault``) and,
# where that is unavailable, run in each worker while it waits in the pool: either way a fresh worker's
# copy-on-write faults are paid off the latency path. Results are discarded, nothing is printed, and
# sympy's result cache is cleared afterwards (``prewarm``), so no answer is precomputed for user code;
# the expressions also differ from the benchmark's snippet on purpose.
PREWARM = """
import math, fractions
import sympy as sp
a, b = sp.symbols("a b")
str(sp.solve(3*a**2 + 5*a - 7, a))
str(sp.Rational(2, 7) + sp.sqrt(3))
str(sp.expand((a - b) ** 3))
"""


def clear_sympy_cache() -> None:
    """Empty sympy's result cache (when sympy is loaded): a worker must start with nothing computed."""
    sympy = sys.modules.get("sympy")
    if sympy is not None:
        sympy.core.cache.clear_cache()


def prewarm(code: str = PREWARM) -> None:
    """Run ``code`` in a throwaway namespace (before any user code; failures are ignored), then clear
    sympy's cache. The whole snippet runs as statements: a trailing expression is not a cell's result."""
    try:
        exec(compile(code, "<prewarm>", "exec"), {"__name__": "__prewarm__", "__builtins__": builtins})
    except Exception:
        pass
    finally:
        clear_sympy_cache()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def serve(ctl: socket.socket, persistent: bool) -> None:
    """Answer execute messages on ``ctl`` until it closes (stateless workers take exactly one)."""
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    cell_no = 0
    while True:
        try:
            msg = protocol.recv(ctl)
        except (OSError, EOFError, ValueError):
            _exit_now()
        cell_no += 1
        nonce = msg.get("nonce")
        try:
            raised, exc_type = run_cell(msg["code"], cell_no, namespace)
        except BaseException as e:  # run_cell catches the cell's exceptions; this is the last guard
            raised, exc_type = True, type(e).__name__
        _flush()
        if exc_type is not None:
            exc_type = exc_type[:200]  # a class name can be any length; the supervisor accepts 200
        try:
            ctl.sendall(protocol.encode({"op": "done", "nonce": nonce, "raised": raised, "exc_type": exc_type}))
        except OSError:
            _exit_now()
        if not persistent:
            # Single use: wait for the supervisor to kill us.
            try:
                ctl.recv(1)
            except OSError:
                pass
            _exit_now()


def _exit_now() -> None:
    import os

    os._exit(0)
