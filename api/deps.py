"""FastAPI dependencies (``Annotated`` aliases) shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.mathagent
    return state


State = Annotated[AppState, Depends(get_state)]
