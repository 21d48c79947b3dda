"""The gateway's request and response models: the public JSON shapes, apart from the stores' rows."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from services.aggregator.errors import GradingParameterError
from services.aggregator.grading import thresholds_for
from services.common.objectstore import is_s3_uri
from services.common.options import DEFAULT_BATCH_SIZE, DEFAULT_FIELD_DIAMETER_MM
from services.gateway.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from services.gateway.locations import check_s3_uri
from services.gateway.slides import Slide

MAX_LOCATION_CHARS = 1024
MAX_NAME_CHARS = 128
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.+-]+$"  # repository folder names; no paths, no control characters


def _plain_text(value: str, what: str) -> str:
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} must not contain control characters (NUL, newlines)")
    return value


class SlideOut(BaseModel):
    id: str
    name: str
    location: str
    sha256: str | None
    size_bytes: int | None

    @classmethod
    def of(cls, slide: Slide) -> SlideOut:
        return cls(
            id=slide.id, name=slide.name, location=slide.location, sha256=slide.sha256, size_bytes=slide.size_bytes
        )


class RegisterSlide(BaseModel):
    location: str = Field(
        min_length=1, max_length=MAX_LOCATION_CHARS, description="s3://bucket/key, or a path under the slide root"
    )
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

    @field_validator("location", "name")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        return None if value is None else _plain_text(value, "location or name")


class JobOptions(BaseModel):
    mpp_um_per_px: float | None = Field(default=None, gt=0, le=4, description="only for slides without MPP")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=300)
    field_diameter_mm: float = Field(
        default=DEFAULT_FIELD_DIAMETER_MM, gt=0, description="a field diameter of the CAP table (0.40 to 0.69 mm)"
    )
    output_location: str | None = Field(
        default=None,
        description="s3://bucket/prefix (or a folder under the aggregator's output root) for result.json, "
        ".geojson and .csv; by default the gateway's results location",
    )

    @field_validator("field_diameter_mm")
    @classmethod
    def _in_the_cap_table(cls, value: float) -> float:
        try:
            thresholds_for(value)  # refused at submit, not when the job has run
        except GradingParameterError as e:
            raise ValueError(str(e)) from e
        return value

    @field_validator("output_location")
    @classmethod
    def _plain_location(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _plain_text(value, "output_location")
        if is_s3_uri(value):
            return check_s3_uri(value, key_required=False)
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError("give s3://bucket/prefix or a relative folder without '..'")
        return value


class CreateJob(BaseModel):
    slide_id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        pattern=MODEL_NAME_PATTERN,
        description="a model name of the repository, or 'ensemble'; by default the gateway's",
    )
    options: JobOptions = JobOptions()


class JobState(StrEnum):
    queued = QUEUED
    running = RUNNING
    succeeded = SUCCEEDED
    failed = FAILED
    cancelled = CANCELLED


class JobOut(BaseModel):
    id: str
    slide_location: str
    model: str
    state: str
    tiles_done: int
    tiles_total: int
    progress: float
    eta_s: float | None = Field(description="seconds left at the rate so far; null until the first batch is done")
    attempts: int
    error: str | None
    error_code: str | None = Field(
        default=None, description="why the slide was refused (not_brightfield, not_he, implausible_colours, no_tissue)"
    )

    @classmethod
    def of(cls, job: Job) -> JobOut:
        progress = job.tiles_done / job.tiles_total if job.tiles_total else 0.0
        return cls(
            id=job.id,
            slide_location=job.slide_location,
            model=job.model,
            state=job.state,
            tiles_done=job.tiles_done,
            tiles_total=job.tiles_total,
            progress=round(progress, 4),
            eta_s=job.eta_s,
            attempts=job.attempts,
            error=job.error,
            error_code=job.error_code,
        )
