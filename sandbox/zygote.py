"""The zygote: a warm interpreter (sympy, numpy, mpmath imported) that forks isolated workers.

Before serving it freezes its objects out of the garbage collector's reach, backs its heap with huge
pages and learns which pages a typical cell touches (``prefault``), so that forking, running and
exiting a worker copy as little memory as possible.

Started by the supervisor with an empty environment (no secret ever enters its memory) and with nothing
but the number of its control socket on the command line: the configuration arrives as the first message
on that SOCK_SEQPACKET socket, so no worker finds it in ``sys.argv`` or ``/proc/self/cmdline``. It first
enters a new PID namespace (the process the supervisor started stays outside, waiting, and its child
becomes the zygote, pid 1 of the namespace: workers cannot name a host pid, and all of them die with it),
then private IPC, network and mount namespaces and the workers' filesystem view (``isolation``,
``rootfs``). For every worker it hands the supervisor, by SCM_RIGHTS, the worker's command socket, its
stdout and stderr pipes and a pidfd; it keeps a pidfd of its own per worker to learn of its exit, reaps
it and reports the exit status with the CPU time used. It dies with the supervisor (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import gc
import json
import os
import select
import selectors
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.isolation import ZygoteHandles
    from sandbox.prefault import Plan

# The pages a typical cell touches, learned once by ``prefault.learn``; None when prefaulting is
# unavailable (workers then run ``harness.prewarm`` instead).
_PREFAULT: Plan | None = None
MAX_CONFIG = 1 << 20


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


def _child(cfg: dict[str, Any], handles: ZygoteHandles, slot: int, persistent: bool, cmd: socket.socket,
           out_w: int, err_w: int) -> None:
    """Runs in the forked worker; never returns."""
    code = 70
    report_fd = cmd.fileno()  # where a setup failure is reported (fd 3 once the descriptors are arranged)
    try:
        from sandbox import harness, isolation, protocol

        # Join the slot's cgroups and network namespace while the zygote's descriptors are still open.
        applied = isolation.enter_slot(handles, slot, handles.slot_netns.get(slot))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        cmd_fd = cmd.detach()
        os.dup2(cmd_fd, 3)
        report_fd = 3
        os.closerange(4, 1 << 16)
        cmd = socket.socket(fileno=3)
        cmd.setblocking(True)
        # Opened before seccomp refuses pidfd_open: prefaulting advises this process through it.
        self_pidfd = os.pidfd_open(os.getpid()) if _PREFAULT else -1
        applied.update(isolation.isolate_worker(cfg, slot, persistent))
        if cfg.get("prewarm"):
            if _PREFAULT:
                _PREFAULT.populate(self_pidfd)
            else:
                harness.prewarm()
        if self_pidfd >= 0:
            os.close(self_pidfd)
        cmd.sendall(protocol.encode({"op": "ready", "applied": applied}))
        code = 0
        harness.serve(cmd, persistent)
    except BaseException:
        if code != 0:  # only before "ready": once serving, a stray frame would be misread mid-cell
            try:
                from sandbox import protocol

                os.write(report_fd, protocol.encode({"op": "setup_failed",
                                                      "error": traceback.format_exc(limit=3)[-2000:]}))
            except BaseException:
                pass
    finally:
        os._exit(code)


def _enter_pid_namespace(ctl: socket.socket) -> None:
    """Make the rest of this program run as pid 1 of a new PID namespace. The process the supervisor
    started stays outside as a waiting parent (it exits with the zygote, and the zygote dies with it);
    returns only in the child."""
    from sandbox import linux

    linux.unshare(linux.CLONE_NEWPID)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid:
        ctl.close()
        os.close(alive_r)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    os.close(alive_w)
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([alive_r], [], [], 0)[0]:  # EOF: the parent died before the death signal was armed
        os._exit(0)
    os.close(alive_r)


def main() -> None:
    ctl = socket.socket(fileno=int(sys.argv[1]))
    from sandbox import linux

    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(0)
    cfg = json.loads(ctl.recv(MAX_CONFIG))
    del sys.argv[1:], sys.orig_argv[1:]
    if cfg["protections"].get("pid_ns"):
        try:
            _enter_pid_namespace(ctl)
        except OSError as e:
            ctl.send(json.dumps({"op": "fatal", "error": f"zygote isolation failed: {e}"}).encode())
            os._exit(1)
    _serve(cfg, ctl)


def _serve(cfg: dict[str, Any], ctl: socket.socket) -> None:
    _warm()
    from sandbox import harness, isolation, linux, prefault, protocol  # noqa: F401  (shared by workers)

    if cfg["protections"].get("seccomp"):
        import pyseccomp  # noqa: F401

        from sandbox import seccomp_filter

        try:
            seccomp_filter.precompile()
        except (OSError, RuntimeError, ValueError):
            pass  # each worker then compiles the same filter itself (slower, equally strict)

    try:
        zy_applied, handles = isolation.prepare_zygote(cfg)
    except OSError as e:
        ctl.send(json.dumps({"op": "fatal", "error": f"zygote isolation failed: {e}"}).encode())
        os._exit(1)
    linux.scrub_initial_strings()
    gc.collect()
    gc.freeze()  # fewer copy-on-write faults in workers
    zy_applied["huge_pages_mb"] = prefault.collapse_heap()
    if cfg.get("prewarm"):
        zy_applied["prefault_pages"] = _learn_pages()

    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pidfd -> pid
    ctl.send(json.dumps({"op": "started", "applied": zy_applied}).encode())

    def shutdown() -> None:
        """The supervisor is gone (control socket closed or broken): take every worker down with us."""
        for pidfd in children:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)

    def reap(pidfd: int) -> None:
        pid = children.pop(pidfd)
        sel.unregister(pidfd)
        os.close(pidfd)
        try:
            _, status, ru = os.wait4(pid, 0)
        except ChildProcessError:
            return
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
            events = sel.select()
        except InterruptedError:
            continue
        for key, _ in events:
            if key.fileobj is not ctl:
                reap(int(key.fd))
                continue
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
            handles.netns_for(slot)
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:
                sel.close()
                ctl.close()
                parent_end.close()
                os.close(out_r)
                os.close(err_r)
                _child(cfg, handles, slot, persistent, child_end, out_w, err_w)
            child_end.close()
            os.close(out_w)
            os.close(err_w)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = pid
            sel.register(pidfd, selectors.EVENT_READ)
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


if __name__ == "__main__":
    main()
