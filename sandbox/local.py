"""``local_service(tmp_dir)``: a private ``python -m sandbox serve`` on a unix socket in ``tmp_dir``,
for as long as a command needs one (a CLI command that finds no running service, the tests).

Strict unless ``dev=True`` (then it starts where a protection is missing, with every protection
the host supports). Yields a connected ``SandboxClient``; stops the service (and its zygote and
workers) on exit, and with the calling process if that dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sandbox.client import SandboxClient, SandboxUnreachable
from sandbox.settings import SOCKET_NAME


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the caller dies, however abruptly (a killed
    command or test run must not leave a service behind; the service stops its own workers)."""
    from sandbox import linux

    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.asynccontextmanager
async def local_service(tmp_dir: str | os.PathLike[str], *, dev: bool = False, startup_timeout_s: float = 90.0,
                        extra_env: dict[str, str] | None = None, **settings: object) -> AsyncIterator[SandboxClient]:
    """Start the service; extra keyword settings become ``MATHAGENT_SANDBOX_<NAME>`` variables;
    ``extra_env`` is added to the service's environment (which ``serve`` then scrubs). A service
    that cannot start (strict mode on a host lacking a protection) raises ``RuntimeError`` with
    the end of its log."""
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    sock = tmp / SOCKET_NAME
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    if dev:
        env["MATHAGENT_DEV"] = "1"
    env.update(extra_env or {})
    for k, v in settings.items():
        env[f"MATHAGENT_SANDBOX_{k.upper()}"] = str(v)
    log_path = tmp / "sandbox-service.log"
    log = open(log_path, "wb")  # noqa: SIM115  (handed to the child; closed in finally)
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "serve", "--socket", str(sock)], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)
    client = SandboxClient(f"unix://{sock}")
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sandbox service exited ({proc.returncode}): {log_path.read_text()[-3000:]}")
            if sock.exists():
                with contextlib.suppress(SandboxUnreachable):
                    h = await client.health()
                    if h.get("status") == "ok":
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sandbox service did not start: {log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.02)
        yield client
    finally:
        await client.aclose()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        log.close()
