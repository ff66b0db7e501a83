"""Errors of the OpenAI-compatible routes as OpenAI and vLLM answer them.

Every invalid request there is a 400 ``invalid_request_error`` (the ``openai`` client raises
``BadRequestError``; a 422 would surface as ``UnprocessableEntityError``), and ``param`` names
the field the way OpenAI does: ``messages[0].role``. The gateway's own routes keep their 422.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, describe_validation

_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def openai_param(param: str) -> str:
    """``messages.0.content.1.type`` -> ``messages[0].content[1].type``."""
    return _INDEX.sub(r"[\1]", param)


class OpenAIRoute(APIRoute):
    """A route whose request errors are answered as OpenAI does (400, OpenAI-style ``param``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                message, param, code = describe_validation(list(exc.errors()), openai_param)
                raise ApiError(400, message, param=param, code=code) from None
            except ApiError as exc:
                if exc.status == 422:
                    param = openai_param(exc.body.param) if exc.body.param else None
                    raise ApiError(400, exc.body.message, param=param, code=exc.body.code,
                                   headers=exc.headers) from None
                raise

        return route
