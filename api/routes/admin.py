"""Operator endpoints, all behind one bearer-token dependency (compared in constant time).

- ``POST /admin/retrain``: a retrain job on the trainer's arq queue, one per idempotency key
  (:mod:`trainer.jobs`); ``GET /admin/jobs`` and ``GET /admin/jobs/{id}`` read the job records
  the worker writes (state, progress, outcome).
- ``GET /admin/versions``: the registry's versions with their manifests, which one is active,
  previous and resident, and the swaps with their phase timings.
- ``POST /admin/deploy {version}`` and ``POST /admin/rollback``: the hot swap (:mod:`api.swap`);
  one swap at a time (409 otherwise), a corrupt or half-written version is refused (409) and
  the active version stays.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from api.deps import Admin, State
from api.errors import ApiError, ErrorResponse
from api.state import AppState
from api.swap import SwapError, SwapManager
from api.versions import SwapRecord, VersionsResponse
from trainer.recipe import RetrainRequest

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Admin],
                   responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})

JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


class RetrainBody(RetrainRequest):
    """The body of ``POST /admin/retrain``: a retrain request (unset fields take the worker's
    MATHAGENT_* settings) and an idempotency key. The data folder is the worker's own setting
    (MATHAGENT_DATA_DIR): a request cannot point the trainer at a path."""

    idempotency_key: str | None = Field(None, min_length=1, max_length=128,
                                        description="repeat-safe enqueue: one job per key")
    data_dir: None = Field(None, description="not settable by a request (MATHAGENT_DATA_DIR of the worker)")


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")


class EnqueueResponse(BaseModel):
    job: dict[str, Any] = Field(description="the job record (trainer.jobs.JobRecord)")
    created: bool = Field(description="false: a job with this idempotency key existed and is returned")


class JobList(BaseModel):
    jobs: list[dict[str, Any]] = Field(description="job records (trainer.jobs.JobRecord), newest first; a stored "
                                       "record that cannot be read appears as {id, state: \"unreadable\", error}")


def _json(model: BaseModel, status: int = 200) -> Response:
    """Pydantic's own JSON encoder: a non-finite float in a stored record becomes null instead of
    failing the response (the standard encoder refuses NaN)."""
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def _swap(state: AppState) -> SwapManager:
    if state.swap is None:
        raise ApiError(503, "the model is not loaded yet; retry shortly", code="model_not_ready")
    swap: SwapManager = state.swap
    return swap


def _swap_error(exc: SwapError) -> ApiError:
    return ApiError(exc.status, str(exc), code=exc.code, param="version" if exc.code in (
        "unknown_version", "version_corrupt", "golden_mismatch") else None)


async def _queue(state: AppState) -> Any:
    """The arq pool on the gateway's Redis (made once, closed with the app state)."""
    pool = state.extra.get("arq")
    if pool is None:
        from trainer.jobs import connect

        try:
            pool = await connect(state.settings.redis_url)
        except Exception as exc:
            raise ApiError(503, f"the job queue (Redis) is unreachable: {type(exc).__name__}", code="queue_unavailable") from None
        state.extra["arq"] = pool
    return pool


@router.post("/retrain", status_code=202, response_model=EnqueueResponse,
             responses={200: {"model": EnqueueResponse, "description": "the job of this idempotency key existed"}})
async def retrain(state: State, body: RetrainBody | None = None) -> Any:
    """Enqueue a retraining job for the trainer worker (idempotent by key)."""
    from trainer.jobs import UnreadableJobError, enqueue_retrain

    body = body or RetrainBody()
    request = RetrainRequest.model_validate(body.model_dump(exclude={"idempotency_key"}))
    pool = await _queue(state)
    try:
        result = await enqueue_retrain(pool, request, body.idempotency_key, prefix=state.settings.job_prefix,
                                       queue_name=state.settings.queue_name, trigger="api")
    except OSError as exc:
        raise ApiError(503, f"the job queue (Redis) is unreachable: {type(exc).__name__}", code="queue_unavailable") from None
    except UnreadableJobError as exc:
        raise ApiError(409, str(exc), param="idempotency_key", code="job_unreadable") from None
    payload = EnqueueResponse(job=result.job.model_dump(mode="json"), created=result.created)
    return _json(payload, status=202 if result.created else 200)


@router.get("/jobs", response_model=JobList)
async def jobs(state: State, limit: int = 50) -> Response:
    """Training jobs, newest first, with their states and progress."""
    from trainer.jobs import read_jobs

    if not 1 <= limit <= 500:
        raise ApiError(422, "limit: must be between 1 and 500", param="limit", code="invalid_value")
    try:
        records = await read_jobs(state.redis, prefix=state.settings.job_prefix, limit=limit)
    except (OSError, RedisError) as exc:
        raise ApiError(503, f"the job store (Redis) is unreachable: {type(exc).__name__}", code="queue_unavailable") from None
    return _json(JobList(jobs=[r.model_dump(mode="json") for r in records]))


@router.get("/jobs/{job_id}", responses={404: {"model": ErrorResponse}})
async def job(job_id: JobId, state: State) -> Response:
    """One job: state, progress, published versions, outcome or error (a stored record that cannot
    be read: ``{id, state: "unreadable", error}``)."""
    from trainer.jobs import read_job

    try:
        record = await read_job(state.redis, job_id, prefix=state.settings.job_prefix)
    except (OSError, RedisError) as exc:
        raise ApiError(503, f"the job store (Redis) is unreachable: {type(exc).__name__}", code="queue_unavailable") from None
    if record is None:
        raise ApiError(404, f"no job {job_id!r}", param="job_id", code="job_not_found")
    return _json(record)


@router.get("/versions", response_model=VersionsResponse)
async def versions(state: State) -> VersionsResponse:
    """Published model versions (manifest data), which is active / previous / resident, and swaps
    with their phase timings."""
    return _swap(state).versions()


@router.post("/deploy", response_model=SwapRecord,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
async def deploy(body: DeployRequest, state: State) -> SwapRecord:
    """Load a version beside the active one, verify it (checksums, golden prompts), switch. Answers
    once committed; the old version drains and is unloaded in the background (see /admin/versions)."""
    try:
        return await _swap(state).deploy(body.version)
    except SwapError as exc:
        raise _swap_error(exc) from None


@router.post("/rollback", response_model=SwapRecord, responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
async def rollback(state: State) -> SwapRecord:
    """Switch back to the previous version (a flip while it is still loaded, else a swap to it)."""
    try:
        return await _swap(state).rollback()
    except SwapError as exc:
        raise _swap_error(exc) from None
