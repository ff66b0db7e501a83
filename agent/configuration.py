"""Loading a settings object at process start: bad configuration exits with ONE clear line
naming the environment variable, never a traceback. Every service's entry point uses it
(``python -m api serve``, ``python -m trainer worker``, the ``mathagent`` commands)."""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class ConfigError(SystemExit):
    """Exit with a one-line configuration message (status 2, like a usage error)."""

    def __init__(self, message: str) -> None:
        print(f"mathagent: configuration error: {message}", file=sys.stderr)
        super().__init__(2)
        self.message = message


def describe(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
        name = (prefix + "_".join(loc)).upper() if loc else ""
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{name}: {msg}" if name and name not in msg else msg)
    return "; ".join(parts)


def load(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment (plus overrides), or exit with one clear line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        raise ConfigError(describe(exc, prefix)) from None
