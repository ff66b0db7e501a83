"""How a command ends on an error the user can fix: one line on stderr, exit status 2, never a traceback."""

from __future__ import annotations

import sys

from pydantic import ValidationError


def fail(message: str) -> int:
    """Print ``mathagent: <message>`` on stderr; the exit status of a usage error."""
    print(f"mathagent: {message}", file=sys.stderr)
    return 2


def option_errors(exc: ValidationError) -> str:
    """A config model's validation errors named by their command-line options (``--max-steps: ...``)."""
    parts = []
    for e in exc.errors():
        message = str(e["msg"]).removeprefix("Value error, ")
        flag = "-".join(str(p) for p in e["loc"]).replace("_", "-")
        parts.append(f"--{flag}: {message}" if flag else message)  # a whole-model check names no option
    return "; ".join(parts)
