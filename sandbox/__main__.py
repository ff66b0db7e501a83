"""``python -m sandbox serve | exec | doctor``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import typer

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "MATHAGENT_DEV", "MATHAGENT_STATE_DIR")
_REEXECED = "MATHAGENT_SANDBOX_REEXECED"

app = typer.Typer(name="python -m sandbox", help="mathagent's sandboxed Python executor",
                  no_args_is_help=True, add_completion=False)


def _clean_environment_or_reexec() -> None:
    """The supervisor holds no secrets: re-exec with only the sandbox's own settings in the environment."""
    if os.environ.get(_REEXECED):
        return
    keep = {k: v for k, v in os.environ.items() if k in _KEEP_ENV or k.startswith("MATHAGENT_SANDBOX_")}
    if keep != dict(os.environ):
        keep[_REEXECED] = "1"
        os.execve(sys.executable, [sys.executable, "-m", "sandbox", *sys.argv[1:]], keep)


@app.command()
def serve(
    socket: str | None = typer.Option(None, "--socket", help="unix socket path (created 0600)"),
    port: int | None = typer.Option(None, "--port", help="loopback TCP port (127.0.0.1 only)"),
) -> None:
    """Run the sandbox service."""
    if socket is not None and port is not None:
        raise typer.BadParameter("--socket and --port are mutually exclusive")
    _clean_environment_or_reexec()
    import logging

    from sandbox.service import run
    from sandbox.settings import SandboxSettings
    from sandbox.supervisor import SandboxUnavailable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = SandboxSettings()
    if port is None and socket is None:
        url = settings.resolved_url
        if url.startswith("http://"):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
        else:
            socket = url[len("unix://"):]
    try:
        run(settings, socket_path=socket, port=port)
    except SandboxUnavailable as e:
        typer.echo(f"sandbox: {e}", err=True)
        raise typer.Exit(2) from None


def _one_line(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _exec(code: str, session: str | None, timeout: float | None, memory_mb: int | None) -> int:
    from sandbox.client import SandboxClient, SandboxUnreachable
    from sandbox.settings import SandboxSettings

    settings = SandboxSettings()
    client = SandboxClient(settings.resolved_url)
    try:
        await client.health()
        result = await client.execute(code, session_id=session, timeout_s=timeout, memory_mb=memory_mb)
    except SandboxUnreachable:
        # No service: run one ephemeral supervisor just for this snippet (imported only here: a call
        # against a running service does not need it).
        from sandbox.supervisor import SandboxUnavailable, Supervisor

        try:
            async with Supervisor(settings.model_copy(update={"pool_size": 1, "max_sessions": 1})) as sup:
                result = await sup.execute(code, session_id=session, timeout_s=timeout, memory_mb=memory_mb)
        except SandboxUnavailable as e:
            _one_line({"status": "sandbox_error", "detail": str(e)})
            return 2
    finally:
        await client.aclose()
    sys.stdout.write(result.model_dump_json() + "\n")
    sys.stdout.flush()
    return 0


@app.command("exec")
def exec_(
    file: str = typer.Argument(..., help="a file with Python code, or - for stdin"),
    session: str | None = typer.Option(None, "--session", help="run in this stateful session"),
    timeout: float | None = typer.Option(None, "--timeout", help="wall-clock limit in seconds"),
    memory_mb: int | None = typer.Option(None, "--memory-mb", help="memory limit in MiB"),
) -> None:
    """Run one snippet and print one JSON ExecResult (one line, whatever happens)."""
    try:
        if file == "-":
            code = sys.stdin.read()
        else:
            with open(file, encoding="utf-8") as f:
                code = f.read()
    except (OSError, UnicodeDecodeError) as e:
        _one_line({"status": "sandbox_error", "detail": f"cannot read the code: {e}"})
        raise typer.Exit(2) from None
    try:
        rc = asyncio.run(_exec(code, session, timeout, memory_mb))
    except Exception as e:  # a failure of the executor itself: still the one JSON line, never a traceback
        _one_line({"status": "sandbox_error", "detail": f"sandbox failure: {type(e).__name__}: {e}"[:300]})
        rc = 1
    raise typer.Exit(rc)


async def _service_health(url: str) -> tuple[dict | None, str]:
    from sandbox.client import SandboxClient, SandboxUnreachable

    client = SandboxClient(url)
    try:
        return await client.health(), ""
    except (SandboxUnreachable, ValueError) as e:
        return None, str(e)
    finally:
        await client.aclose()


def _doctor_quiet(url: str) -> int:
    """The healthcheck: silent and 0 only when this host has every protection AND a service answers at
    ``url`` reporting itself up with none missing; otherwise one line on stderr and 1."""
    from sandbox.capabilities import probe

    problems: list[str] = []
    missing = probe().missing()
    if missing:
        problems.append("host lacks: " + ", ".join(missing))
    health, err = asyncio.run(_service_health(url))
    if health is None:
        problems.append(err)
    else:
        if health.get("status") != "ok":
            problems.append(f"service at {url} reports status {health.get('status')!r}")
        if health.get("missing"):
            problems.append("service runs without: " + ", ".join(health["missing"]))
    if problems:
        print("sandbox doctor: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


@app.command()
def doctor(
    quiet: bool = typer.Option(False, "--quiet", help="healthcheck: print nothing and exit 0 only if every "
                               "protection is available and a service answers at the configured URL"),
    url: str | None = typer.Option(None, "--url", help="service URL to check (default: MATHAGENT_SANDBOX_URL "
                                   "or the state dir's socket)"),
) -> None:
    """Print which protections this host supports."""
    from sandbox.capabilities import probe
    from sandbox.settings import SandboxSettings

    settings = SandboxSettings()
    target = url or settings.resolved_url
    if quiet:
        raise typer.Exit(_doctor_quiet(target))
    host = probe()
    missing = host.missing()
    report = {"host": host.model_dump(), "missing": missing, "strict": settings.strict_mode,
              "would_start": not (settings.strict_mode and missing)}
    print(json.dumps(report, indent=2))
    raise typer.Exit(0 if not missing else 1)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (for callers that do not want SystemExit)."""
    try:
        app(args=argv, prog_name="python -m sandbox")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
