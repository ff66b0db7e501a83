"""How the gateway is served: the one uvicorn configuration (``python -m api serve`` and the
test stack use it), and an access log that never holds a secret.

- ``proxy_headers=False``: uvicorn would otherwise rewrite the client address from
  ``X-Forwarded-For`` for any peer on loopback, so every local process could pick its own rate
  limit bucket; the gateway reads forwarded addresses itself, from MATHAGENT_TRUSTED_PROXIES only
  (:mod:`api.callers`).
- The access log records the path without query values: a token put in a query string (by
  mistake, or by a client that does so) never reaches a log file.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from api.settings import GatewaySettings

ACCESS_LOGGER = "uvicorn.access"
_QUERY_VALUE = re.compile(r"=[^&#]*")


def redact_query(path: str) -> str:
    """``/x?token=abc&y=1`` -> ``/x?token=***&y=***`` (names kept, every value hidden)."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    return f"{base}?{_QUERY_VALUE.sub('=***', query)}" if "=" in query else f"{base}?***"


class RedactQuery(logging.Filter):
    """Rewrites uvicorn's access records (``client, method, path?query, http version, status``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            path = args[2]
            if isinstance(path, str):
                args[2] = redact_query(path)
                record.args = tuple(args)
        return True


def redact_access_log() -> None:
    """Install :class:`RedactQuery` on uvicorn's access logger (once; every handler sees redacted records)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactQuery) for f in logger.filters):
        logger.addFilter(RedactQuery())


def uvicorn_config(app: ASGIApp, settings: GatewaySettings, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = dict(host=settings.host, port=settings.port, log_level="info", proxy_headers=False,
                                   server_header=False)
    config = uvicorn.Config(app, **{**options, **overrides})  # configures logging: the filter goes on after
    redact_access_log()
    return config
