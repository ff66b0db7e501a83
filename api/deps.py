"""FastAPI dependencies (``Annotated`` aliases) shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.callers import BadCredential, Caller
from api.errors import ApiError
from api.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.mathagent
    return state


State = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="the admin token (MATHAGENT_ADMIN_TOKEN)")
_api_key = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                      description="an API key, where the server has them (MATHAGENT_API_KEYS); optional unless "
                      "MATHAGENT_REQUIRE_API_KEY")


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


async def _limited(request: Request, state: AppState, budget: str, per_minute: int | None) -> Caller:
    """Identify the caller (:mod:`api.callers`) and count this request against its budget (429
    beyond it). A bad credential is counted against the sender's address first, so guessing keys
    is rate limited like anything else, then refused with 401."""
    assert state.limiter is not None and state.callers is not None
    try:
        caller = state.callers.identify(request)
    except BadCredential as exc:
        await state.limiter.check(state.callers.address(request).key, budget=budget, per_minute=per_minute)
        raise ApiError(401, str(exc), code=exc.code, headers={"www-authenticate": 'Bearer realm="mathagent"'}) from None
    await state.limiter.check(caller.key, budget=budget, per_minute=per_minute)
    request.state.caller = caller
    return caller


async def rate_limited(
    request: Request, state: State, _key: Annotated[HTTPAuthorizationCredentials | None, Depends(_api_key)]
) -> Caller:
    """Solve and chat: the caller's per-minute request budget (MATHAGENT_RATE_LIMIT_PER_MINUTE)."""
    return await _limited(request, state, "requests", None)


async def feedback_limited(
    request: Request, state: State, _key: Annotated[HTTPAuthorizationCredentials | None, Depends(_api_key)]
) -> Caller:
    """Feedback: the caller's own per-minute budget (MATHAGENT_FEEDBACK_RATE_LIMIT_PER_MINUTE)."""
    return await _limited(request, state, "feedback", state.settings.feedback_rate_limit_per_minute)


Admin = Depends(require_admin)
RateLimited = Depends(rate_limited)
FeedbackCaller = Annotated[Caller, Depends(feedback_limited)]
