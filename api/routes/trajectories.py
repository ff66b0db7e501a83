"""``GET /v1/trajectories/{id}`` and ``POST /v1/trajectories/{id}/feedback``.

Feedback (thumbs up/down, a corrected answer, a comment) is appended to the trajectory log's
feedback stream, keyed by trajectory id: the trainer turns it into labels.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from agent.trajlog import Feedback
from api.deps import State
from api.errors import ApiError, ErrorResponse
from api.protocol import FeedbackOut, FeedbackRequest, TrajectoryOut

router = APIRouter(tags=["trajectories"])

TrajectoryIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="a trajectory id")]


def _log(state: State):  # type: ignore[no-untyped-def]
    if state.trajectory_log is None:
        raise ApiError(503, "the trajectory log is not available", code="log_unavailable")
    return state.trajectory_log


async def _find(state: State, trajectory_id: str):  # type: ignore[no-untyped-def]
    try:
        traj = await _log(state).get(trajectory_id)
    except ApiError:
        raise
    except Exception as exc:
        raise ApiError(503, f"the trajectory store is unreachable ({type(exc).__name__}); retry shortly",
                       code="store_unavailable") from None
    if traj is None:
        raise ApiError(404, f"no trajectory {trajectory_id}", param="trajectory_id", code="trajectory_not_found")
    return traj


@router.get("/v1/trajectories/{trajectory_id}", response_model=TrajectoryOut,
            responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def get_trajectory(trajectory_id: TrajectoryIdPath, state: State) -> TrajectoryOut:
    traj = await _find(state, trajectory_id)
    try:
        feedback = await _log(state).feedback(trajectory_id)
    except Exception:
        feedback = []
    return TrajectoryOut(trajectory=traj, feedback=[FeedbackOut.model_validate(f.model_dump()) for f in feedback])


@router.post("/v1/trajectories/{trajectory_id}/feedback", response_model=FeedbackOut, status_code=201,
             responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
async def post_feedback(trajectory_id: TrajectoryIdPath, body: FeedbackRequest, state: State) -> FeedbackOut:
    await _find(state, trajectory_id)
    record = Feedback(trajectory_id=trajectory_id, rating=body.rating, corrected_answer=body.answer, comment=body.comment)
    await _log(state).add_feedback(record)  # spooled to disk if Redis went down meanwhile: never lost
    return FeedbackOut.model_validate(record.model_dump())
