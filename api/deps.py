"""FastAPI dependencies (``Annotated`` aliases) shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.limits import client_key
from api.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.mathagent
    return state


State = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="the admin token (MATHAGENT_ADMIN_TOKEN)")


def require_admin(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The admin router's one guard: a bearer token compared in constant time (never logged)."""
    expected = state.settings.admin_token.get_secret_value()
    challenge = {"www-authenticate": 'Bearer realm="mathagent-admin"'}
    if not expected:
        raise ApiError(401, "admin is disabled: no MATHAGENT_ADMIN_TOKEN is configured", code="admin_disabled",
                       headers=challenge)
    if credentials is None:
        raise ApiError(401, "admin routes need `Authorization: Bearer <token>`", code="missing_token", headers=challenge)
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise ApiError(401, "invalid admin token", code="invalid_token", headers=challenge)


async def rate_limited(request: Request, state: State) -> None:
    """Count this request against its caller's per-minute budget (429 beyond it)."""
    assert state.limiter is not None
    await state.limiter.check(client_key(request))


Admin = Depends(require_admin)
RateLimited = Depends(rate_limited)
