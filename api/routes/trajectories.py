"""``GET /v1/trajectories/{id}`` and ``POST /v1/trajectories/{id}/feedback``.

Feedback (thumbs up/down, a corrected answer, a comment) is appended to the trajectory log's
feedback stream, keyed by trajectory id: the trainer turns it into labels. It is bound to its
sender: one rating per caller and trajectory counts (the latest replaces the earlier ones), at
most MATHAGENT_FEEDBACK_PER_TRAJECTORY callers rate one trajectory, posts are rate limited per
caller, and only *trusted* feedback (with the solve's ``feedback_token``, or from an admin)
can become a training label (:mod:`api.feedback`); the rest are votes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from agent.trajlog import Feedback
from api.deps import FeedbackCaller, State
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
             responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                        409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}})
async def post_feedback(trajectory_id: TrajectoryIdPath, body: FeedbackRequest, state: State,
                        caller: FeedbackCaller) -> FeedbackOut:
    """Rate a trajectory. With the solve's `feedback_token` (or as admin) the feedback is trusted:
    its answer becomes the training label. Otherwise it is one vote per caller."""
    await _find(state, trajectory_id)
    assert state.feedback_tokens is not None
    owner = False
    if body.feedback_token is not None:
        if not state.feedback_tokens.verify(trajectory_id, body.feedback_token):
            raise ApiError(403, "feedback_token does not belong to this trajectory", param="feedback_token",
                           code="invalid_feedback_token")
        owner = True
    # the solving caller is one caller whichever key or address it posts from; an admin is one caller
    who = "owner" if owner else caller.key
    record = Feedback(trajectory_id=trajectory_id, rating=body.rating, corrected_answer=body.answer,
                      comment=body.comment, caller=who, trusted=owner or caller.kind == "admin")
    cap = state.settings.feedback_per_trajectory
    # spooled to disk if Redis went down meanwhile: never lost (the cap is then applied at replay)
    if await _log(state).add_feedback(record, cap=cap) == "over_cap":
        raise ApiError(409, f"this trajectory already has feedback from {cap} callers; only they can change theirs",
                       code="feedback_limit_reached")
    return FeedbackOut.model_validate(record.model_dump())
