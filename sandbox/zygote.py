"""The zygote: a warm interpreter (sympy, numpy, mpmath imported) that forks isolated workers.

Before serving it freezes its objects out of the garbage collector's reach, backs its heap with huge
pages and learns which pages a typical cell touches (``prefault``), so that forking, running and
exiting a worker copy as little memory as possible.

Started by the supervisor with an empty environment (no secret ever enters its memory), it enters an
empty network namespace and a private mount namespace once, then serves spawn requests on a
SOCK_SEQPACKET control socket (fd 3). For every worker it hands the supervisor, by SCM_RIGHTS, the
worker's command socket, its stdout and stderr pipes and a pidfd; it reaps workers and reports each
exit status with the CPU time the worker used. It dies with the supervisor (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.prefault import Plan

CTL_FD = 3
# The pages a typical cell touches, learned once by ``prefault.learn``; None when prefaulting is
# unavailable (workers then run ``harness.prewarm`` instead).
_PREFAULT: Plan | None = None


def _warm() -> None:
    """Import the math stack and run its first-call paths once, so every worker inherits them loaded.
    The expressions differ from any benchmark's, and sympy's result cache is emptied afterwards: workers
    inherit loaded code, never a computed result."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import mpmath  # noqa: F401
    import numpy  # noqa: F401
    import sympy as sp

    from sandbox import harness

    t = sp.symbols("t")
    sp.solve(t**2 - 5 * t + 6, t)
    sp.simplify(sp.sin(t) ** 2 + sp.cos(t) ** 2)
    sp.integrate(t**3, t)
    str(sp.Rational(2, 5) + sp.sqrt(7))
    harness.clear_sympy_cache()


def _learn_pages() -> int:
    """Learn the pages workers should prefault (after ``gc.freeze``: workers start from this layout)."""
    global _PREFAULT
    from sandbox import harness, prefault

    if prefault.supported():
        _PREFAULT = prefault.Plan(prefault.learn(harness.prewarm))
    return _PREFAULT.pages if _PREFAULT else 0


def _child(cfg: dict[str, Any], slot: int, persistent: bool, cmd: socket.socket, out_w: int, err_w: int) -> None:
    """Runs in the forked worker; never returns."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        cmd_fd = cmd.detach()
        os.dup2(cmd_fd, 3)
        os.closerange(4, 1 << 16)
        cmd = socket.socket(fileno=3)
        cmd.setblocking(True)
        from sandbox import harness, isolation, protocol

        applied = isolation.isolate_worker(cfg, slot, persistent)
        if cfg.get("prewarm"):
            if _PREFAULT:
                _PREFAULT.populate()
            else:
                harness.prewarm()
        cmd.sendall(protocol.encode({"op": "ready", "applied": applied}))
        code = 0
        harness.serve(cmd, persistent)
    except BaseException:
        if code != 0:  # only before "ready": once serving, a stray frame would be misread mid-cell
            try:
                from sandbox import protocol

                os.write(3, protocol.encode({"op": "setup_failed", "error": traceback.format_exc(limit=3)[-2000:]}))
            except BaseException:
                pass
    finally:
        os._exit(code)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    ctl = socket.socket(fileno=int(cfg.get("ctl_fd", CTL_FD)))
    from sandbox import isolation, linux, prefault

    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(0)
    _warm()
    from sandbox import harness, protocol  # noqa: F401  (imported before fork, shared by workers)

    if cfg["protections"].get("seccomp"):
        import pyseccomp  # noqa: F401

        from sandbox import seccomp_filter

        try:
            seccomp_filter.precompile()
        except (OSError, RuntimeError, ValueError):
            pass  # each worker then compiles the same filter itself (slower, equally strict)

    try:
        zy_applied = isolation.prepare_zygote(cfg)
    except OSError as e:
        ctl.send(json.dumps({"op": "fatal", "error": f"zygote isolation failed: {e}"}).encode())
        os._exit(1)
    gc.collect()
    gc.freeze()  # fewer copy-on-write faults in workers
    zy_applied["huge_pages_mb"] = prefault.collapse_heap()
    if cfg.get("prewarm"):
        zy_applied["prefault_pages"] = _learn_pages()

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    ctl.send(json.dumps({"op": "started", "applied": zy_applied, "pid": os.getpid()}).encode())

    def shutdown() -> None:
        """The supervisor is gone (control socket closed or broken): take every worker down with us."""
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)

    def reap() -> None:
        while children:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            msg: dict[str, Any] = {"op": "exit", "pid": pid, "cpu_ms": (ru.ru_utime + ru.ru_stime) * 1000}
            if os.WIFSIGNALED(status):
                msg["signal"] = os.WTERMSIG(status)
            else:
                msg["code"] = os.waitstatus_to_exitcode(status)
            try:
                ctl.send(json.dumps(msg).encode())
            except OSError:
                shutdown()

    while True:
        try:
            ready, _, _ = select.select([ctl.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if ctl.fileno() in ready:
            try:
                raw = ctl.recv(65536)
            except OSError:
                raw = b""
            if not raw:
                shutdown()
            req = json.loads(raw)
            if req.get("op") != "spawn":
                continue
            slot, persistent = int(req["slot"]), bool(req["persistent"])
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:
                ctl.close()
                parent_end.close()
                os.close(out_r)
                os.close(err_r)
                os.close(wake_r)
                os.close(wake_w)
                _child(cfg, slot, persistent, child_end, out_w, err_w)
            children.add(pid)
            child_end.close()
            os.close(out_w)
            os.close(err_w)
            pidfd = os.pidfd_open(pid)
            try:
                socket.send_fds(
                    ctl,
                    [json.dumps({"op": "spawned", "slot": slot, "pid": pid, "seq": req.get("seq")}).encode()],
                    [parent_end.fileno(), out_r, err_r, pidfd],
                )
            except OSError:
                shutdown()
            finally:
                parent_end.close()
                os.close(out_r)
                os.close(err_r)
                os.close(pidfd)


if __name__ == "__main__":
    main()
