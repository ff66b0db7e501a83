"""One error shape for every route: OpenAI's ``{"error": {message, type, param, code}}``.

Every failure a client can cause or see goes through here, so clients (the official ``openai``
SDK included) parse one shape, and no traceback ever reaches a user. Responses that a retry
could not fix, or where a retry could run a second solve (5xx after generation started, 408,
409), carry ``x-should-retry: false``: the ``openai`` client honours it and does not re-send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.engines.base import EngineUnavailableError

log = logging.getLogger("mathagent.api")

RETRY_AFTER_S = 5  # what a 503 while a component is down tells the client to wait

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error with a status and a message meant for the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type or error_type(status), param=param, code=code)
        self.headers = headers or {}


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def retry_headers(status: int) -> dict[str, str]:
    """Tell the openai client not to re-send what a retry cannot fix or could run twice."""
    if status in (408, 409) or (status >= 500 and status != 503):
        return {"x-should-retry": "false"}
    return {}


def error_response(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=body).model_dump(),
        status_code=status,
        headers={**retry_headers(status), **(headers or {})},
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def describe_validation(
    errors: list[dict[str, Any]], name: Callable[[str], str] = lambda loc: loc
) -> tuple[str, str | None, str]:
    """Message, first offending parameter and code of a validation failure (input values left out:
    they may be huge or hostile). ``name`` spells a location (``messages.0.role``) as a route's
    clients expect it. A JSON syntax error names no parameter: its location is a character offset."""
    msgs = []
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            offset = _loc(err.get("loc", ()))
            detail = (err.get("ctx") or {}).get("error") or err.get("msg", "invalid JSON")
            msgs.append(f"the body is not valid JSON ({detail}" + (f", at character {offset})" if offset else ")"))
            continue
        where = name(_loc(err.get("loc", ())))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        msgs.append(f"{where}: {msg}" if where else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return "; ".join(msgs) + more, None, "invalid_json"
    return "; ".join(msgs) + more, name(_loc(first.get("loc", ()))) or None, "invalid_value"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = describe_validation(list(exc.errors()))
        return error_response(422, ErrorBody(message=message, type=error_type(422), param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if exc.status_code == 400 and "parsing the body" in message:  # e.g. bytes that are not UTF-8
            message, code = "the request body could not be parsed: send UTF-8 encoded JSON", "invalid_json"
        return error_response(
            exc.status_code, ErrorBody(message=message, type=error_type(exc.status_code), code=code), dict(exc.headers or {})
        )

    @app.exception_handler(EngineUnavailableError)
    async def _engine_down(request: Request, exc: EngineUnavailableError) -> JSONResponse:
        # e.g. the vLLM server died or restarts: the client may retry (nothing was answered); the
        # server's address stays in the log
        log.warning("engine unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            503, ErrorBody(message="the model server is not answering: retry in a few seconds (GET /readyz shows "
                           "each component)", type=error_type(503), code="model_unavailable"),
            {"retry-after": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        return error_response(
            500, ErrorBody(message="internal error (logged on the server)", type="server_error", code="internal_error")
        )
