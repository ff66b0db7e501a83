"""Operator endpoints, all behind one bearer-token dependency (compared in constant time).

Retraining, jobs, versions, deploy and rollback need the trainer worker and the hot swap of
served weights; until those land (the "trainer + hot swap" issue) every route here answers 501
with an error naming the missing capability, *after* authentication, so clients can already
integrate the auth flow and the error shape.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Admin
from api.errors import ApiError, ErrorResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Admin],
                   responses={401: {"model": ErrorResponse}, 501: {"model": ErrorResponse}})

JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idempotency_key: str | None = Field(None, max_length=128, description="repeat-safe enqueue: one job per key")
    iterations: int = Field(1, ge=1, le=100)


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")


def _unavailable(capability: str) -> NoReturn:
    raise ApiError(
        501,
        f"{capability} is not available in this build: it lands with the trainer worker and the hot swap of "
        "served weights (issue: trainer service + model-version hot swap)",
        code="capability_unavailable",
        param=None,
    )


@router.post("/retrain", status_code=202)
async def retrain(body: RetrainRequest | None = None) -> None:
    """Enqueue a retraining job (idempotent by key)."""
    _unavailable("retraining (the arq trainer worker)")


@router.get("/jobs")
async def jobs() -> None:
    """Training jobs with their states."""
    _unavailable("the training job list (the arq trainer worker)")


@router.get("/jobs/{job_id}")
async def job(job_id: JobId) -> None:
    """One job: state, progress, metrics."""
    _unavailable("training job status (the arq trainer worker)")


@router.get("/versions")
async def versions() -> None:
    """Published model versions and which one is active."""
    _unavailable("the model version registry in the gateway (hot swap)")


@router.post("/deploy")
async def deploy(body: DeployRequest) -> None:
    """Load a version beside the active one, verify it, switch."""
    _unavailable("deploying a model version (hot swap)")


@router.post("/rollback")
async def rollback() -> None:
    """Switch back to the previous version."""
    _unavailable("rollback (hot swap)")
