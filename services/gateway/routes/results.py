"""`/v1/jobs/{id}/result...`: a finished job's result as JSON, QuPath GeoJSON, CSV, and a picture."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from services.aggregator.exports import csv_text, geojson_document, overview_png
from services.aggregator.schema import SlideResult
from services.gateway.deps import JobStoreDep, TilerDep
from services.gateway.errors import ResultNotReadyError, SlideRefusedError
from services.gateway.jobs import FAILED, SUCCEEDED, JobStore

router = APIRouter(tags=["results"])


def job_result(jobs: JobStore, job_id: str) -> dict[str, Any]:
    """The job's result; why there is none (refused by quality control, failed, not done) otherwise."""
    job = jobs.get(job_id)
    refused = job.error_code if job.state == FAILED else None
    if refused:
        raise SlideRefusedError(f"job {job_id} has no result: {job.error}", refused)
    if job.state != SUCCEEDED or job.result is None:
        reason = f"it failed: {job.error}" if job.error else f"it is {job.state}"
        raise ResultNotReadyError(f"job {job_id} has no result: {reason}")
    return job.result


@router.get(
    "/v1/jobs/{job_id}/result",
    summary="The result (JSON): the same document `mitoscope score` writes as result.json",
    response_model=SlideResult,
    response_class=JSONResponse,
)
def result(job_id: str, jobs: JobStoreDep) -> JSONResponse:
    return JSONResponse(job_result(jobs, job_id))  # stored as the aggregator built it (a SlideResult)


@router.get("/v1/jobs/{job_id}/result.geojson", summary="The result for QuPath", response_class=Response)
def result_geojson(job_id: str, jobs: JobStoreDep) -> Response:
    return Response(json.dumps(geojson_document(job_result(jobs, job_id))), media_type="application/geo+json")


@router.get("/v1/jobs/{job_id}/result.csv", summary="One row per mitosis", response_class=Response)
def result_csv(job_id: str, jobs: JobStoreDep) -> Response:
    return Response(csv_text(job_result(jobs, job_id)), media_type="text/csv")


@router.get(
    "/v1/jobs/{job_id}/overview.png",
    summary="The slide with every mitosis and the hotspot",
    response_class=Response,
)
def result_overview(job_id: str, jobs: JobStoreDep, tiler: TilerDep) -> Response:
    found = job_result(jobs, job_id)
    slide_png = tiler.overview_png(jobs.get(job_id).slide_location, f"job {job_id}: the tiler's picture of the slide")
    return Response(overview_png(found, slide_png), media_type="image/png")
