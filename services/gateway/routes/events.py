"""`/v1/events/s3`: S3 / MinIO bucket notifications; each new slide object becomes one job."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter

from services.gateway.deps import JobStoreDep, SettingsDep, SlideStoreDep
from services.gateway.errors import BadRequestError
from services.gateway.schemas import JobOptions, JobOut
from services.watcher import is_slide_name

router = APIRouter(tags=["batch"])


def _created_objects(event: dict[str, Any]) -> list[tuple[str, str, str, int | None]]:
    """(bucket, key, ETag, size) of each slide object the notification says was created."""
    records = event.get("Records")
    if not isinstance(records, list):
        raise BadRequestError("expected an S3 event notification with a Records list")
    created = []
    for i, record in enumerate(records):
        try:
            name = record["eventName"]
            bucket = record["s3"]["bucket"]["name"]
            key = unquote_plus(record["s3"]["object"]["key"])
            etag = record["s3"]["object"].get("eTag", "")
            size = record["s3"]["object"].get("size")
        except (KeyError, TypeError) as e:
            raise BadRequestError(f"Records[{i}]: missing {e}") from e
        if not bucket or not key:
            raise BadRequestError(f"Records[{i}]: an empty bucket name or object key")
        if name.startswith(("s3:ObjectCreated", "ObjectCreated")) and is_slide_name(key):
            created.append((bucket, key, etag, size))
    return created


@router.post("/v1/events/s3", summary="S3 / MinIO bucket notifications: score each new slide once")
def s3_events(event: dict[str, Any], jobs: JobStoreDep, slides: SlideStoreDep, settings: SettingsDep) -> list[JobOut]:
    answered = []
    for bucket, key, etag, size in _created_objects(event):
        location = f"s3://{bucket}/{key}"
        # The same object content (same ETag) is one job, however often S3 tells us about it.
        idempotency_key = f"s3:{location}@{etag}"
        existing = jobs.find_by_key(idempotency_key)
        if existing is not None:
            answered.append(JobOut.of(existing))
            continue
        slide = slides.add(key.rsplit("/", 1)[-1], location, None, size)
        job, _ = jobs.create(slide.location, settings.default_model, JobOptions().model_dump(), idempotency_key)
        answered.append(JobOut.of(job))
    return answered
