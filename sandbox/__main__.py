"""``python -m sandbox serve | exec | doctor``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "MATHAGENT_DEV", "MATHAGENT_STATE_DIR")
_REEXECED = "MATHAGENT_SANDBOX_REEXECED"


def _clean_environment_or_reexec() -> None:
    """The supervisor holds no secrets: re-exec with only the sandbox's own settings in the environment."""
    if os.environ.get(_REEXECED):
        return
    keep = {k: v for k, v in os.environ.items() if k in _KEEP_ENV or k.startswith("MATHAGENT_SANDBOX_")}
    if keep != dict(os.environ):
        keep[_REEXECED] = "1"
        os.execve(sys.executable, [sys.executable, "-m", "sandbox", *sys.argv[1:]], keep)


def _serve(args: argparse.Namespace) -> int:
    _clean_environment_or_reexec()
    import logging

    from sandbox.service import run
    from sandbox.settings import SandboxSettings
    from sandbox.supervisor import SandboxUnavailable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = SandboxSettings()
    socket_path = args.socket
    if args.port is None and socket_path is None:
        url = settings.resolved_url
        if url.startswith("http://"):
            args.port = int(url.rsplit(":", 1)[1].split("/")[0])
        else:
            socket_path = url[len("unix://"):]
    try:
        run(settings, socket_path=socket_path, port=args.port)
    except SandboxUnavailable as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 2
    return 0


async def _exec(args: argparse.Namespace) -> int:
    from sandbox.client import SandboxClient, SandboxUnreachable
    from sandbox.settings import SandboxSettings

    if args.file == "-":
        code = sys.stdin.read()
    else:
        with open(args.file, encoding="utf-8") as f:
            code = f.read()
    settings = SandboxSettings()
    client = SandboxClient(settings.resolved_url)
    try:
        await client.health()
        result = await client.execute(code, session_id=args.session, timeout_s=args.timeout,
                                      memory_mb=args.memory_mb)
    except SandboxUnreachable:
        # No service: run one ephemeral supervisor just for this snippet (imported only here: a call
        # against a running service does not need it).
        from sandbox.supervisor import SandboxUnavailable, Supervisor

        try:
            async with Supervisor(settings.model_copy(update={"pool_size": 1, "max_sessions": 1})) as sup:
                result = await sup.execute(code, session_id=args.session, timeout_s=args.timeout,
                                           memory_mb=args.memory_mb)
        except SandboxUnavailable as e:
            print(json.dumps({"status": "sandbox_error", "detail": str(e)}))
            return 2
    finally:
        await client.aclose()
    print(result.model_dump_json())
    return 0


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


def _doctor(args: argparse.Namespace) -> int:
    from sandbox.capabilities import probe
    from sandbox.settings import SandboxSettings

    settings = SandboxSettings()
    url = args.url or settings.resolved_url
    if args.quiet:
        return _doctor_quiet(url)
    host = probe()
    missing = host.missing()
    report = {"host": host.model_dump(), "missing": missing, "strict": settings.strict_mode,
              "would_start": not (settings.strict_mode and missing)}
    print(json.dumps(report, indent=2))
    return 0 if not missing else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox", description="mathagent's sandboxed Python executor")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the sandbox service")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--socket", help="unix socket path (created 0600)")
    g.add_argument("--port", type=int, help="loopback TCP port (127.0.0.1 only)")
    e = sub.add_parser("exec", help="run one snippet and print one JSON ExecResult")
    e.add_argument("--session", default=None)
    e.add_argument("--timeout", type=float, default=None, help="wall-clock limit in seconds")
    e.add_argument("--memory-mb", type=int, default=None, help="memory limit in MiB")
    e.add_argument("file", help="a file with Python code, or - for stdin")
    d = sub.add_parser("doctor", help="print which protections this host supports")
    d.add_argument("--quiet", action="store_true",
                   help="healthcheck: print nothing and exit 0 only if every protection is available and a "
                        "service answers at the configured URL")
    d.add_argument("--url", default=None, help="service URL to check (default: MATHAGENT_SANDBOX_URL or the "
                                               "state dir's socket)")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "exec":
        return asyncio.run(_exec(args))
    return _doctor(args)


if __name__ == "__main__":
    sys.exit(main())
