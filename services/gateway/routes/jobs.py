"""`/v1/jobs`: start scoring a slide, follow a job (also as server-sent events), cancel or retry it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from services.gateway.deps import DetectorDep, JobStoreDep, SettingsDep, SlideStoreDep
from services.gateway.jobs import FINAL_STATES
from services.gateway.schemas import CreateJob, JobOut, JobState

EVENT_POLL_S = 0.5  # how often the event stream looks at the job

router = APIRouter(tags=["jobs"])


@router.post("/v1/jobs", status_code=202, summary="Start scoring a slide")
def create_job(
    body: CreateJob,
    jobs: JobStoreDep,
    slides: SlideStoreDep,
    settings: SettingsDep,
    detector: DetectorDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    slide = slides.get(body.slide_id)
    if body.model and body.model != settings.default_model:
        detector.check_model(body.model)  # refused now, not when the job runs
    options = body.options.model_dump()
    job, created = jobs.create(slide.location, body.model or settings.default_model, options, idempotency_key)
    if not created:
        response.status_code = 200
    return JobOut.of(job)


@router.get("/v1/jobs", summary="Jobs, newest first")
def list_jobs(
    jobs: JobStoreDep,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobOut]:
    return [JobOut.of(job) for job in jobs.list(limit, state.value if state else None)]


@router.get("/v1/jobs/{job_id}", summary="State and progress of a job")
def get_job(job_id: str, jobs: JobStoreDep) -> JobOut:
    return JobOut.of(jobs.get(job_id))


@router.delete("/v1/jobs/{job_id}", summary="Cancel a job")
def cancel_job(job_id: str, jobs: JobStoreDep) -> JobOut:
    return JobOut.of(jobs.cancel(job_id))


@router.post("/v1/jobs/{job_id}/retry", summary="Queue a failed job again; it resumes from its checkpointed batches")
def retry_job(job_id: str, jobs: JobStoreDep) -> JobOut:
    return JobOut.of(jobs.requeue(job_id))


@router.get(
    "/v1/jobs/{job_id}/events",
    summary="Progress as server-sent events until the job ends",
    response_class=StreamingResponse,
)
async def events(job_id: str, jobs: JobStoreDep) -> StreamingResponse:
    await asyncio.to_thread(jobs.get, job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last = None
        while True:
            job = JobOut.of(await asyncio.to_thread(jobs.get, job_id))
            if job != last:
                yield f"event: progress\ndata: {job.model_dump_json()}\n\n"
                last = job
            if job.state in FINAL_STATES:
                yield f"event: end\ndata: {job.model_dump_json()}\n\n"
                return
            await asyncio.sleep(EVENT_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream")
