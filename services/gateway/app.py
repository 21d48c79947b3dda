"""gateway: the public, versioned REST API (JSON) that hospital systems call.

    GATEWAY_TILER_URL=... uvicorn services.gateway.app:create_app --factory --host 127.0.0.1 --port 8100

Slides are uploaded (multipart, streamed to disk, size-limited, SHA-256 recorded, then kept under
the slide root or put in S3 when `GATEWAY_UPLOAD_LOCATION` is an `s3://` prefix) or registered by
location (`s3://...` or a path under the slide root). Jobs are durable rows in the job store;
the gateway runs `worker_threads` workers itself (0 when separate worker processes do the work).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_plus

import httpx
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.exc import SQLAlchemyError

from mitoscope import watch
from mitoscope.watch import SlideSource, Watcher, WrittenSlide, open_source
from services.aggregator.exports import csv_text, geojson_document, overview_png
from services.common import objectstore
from services.common.objectstore import ObjectStoreError, S3Config, is_s3_uri, parse_s3_uri
from services.common.web import service_app
from services.gateway.jobs import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStateError,
    JobStore,
    UnknownJobError,
    make_engine,
    slide_refused_code,
)
from services.gateway.orchestrate import DEFAULT_BATCHES_IN_FLIGHT, ServiceUrls
from services.gateway.uploads import UploadError, UploadStorageError, UploadTooLargeError, receive_multipart
from services.gateway.worker import DEFAULT_RETRY, RetryPolicy, WorkerConfig, run_worker

MAX_UPLOAD_BYTES = 20 * 1024**3
MAX_REGISTRATION_BYTES = 64 * 1024
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".dcm", ".vms", ".vmu", ".bif", ".zip")
EVENT_POLL_S = 0.5

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    database_url: str = "sqlite:///mitoscope-gateway.db"
    slide_root: Path = Path("slides")
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    upload_location: str = Field(default="", description="s3://bucket/prefix for uploads; empty: the slide root")
    tiler_url: str = "http://127.0.0.1:8101"
    preprocess_url: str = "http://127.0.0.1:8102"
    detector_url: str = "http://127.0.0.1:8103"
    aggregator_url: str = "http://127.0.0.1:8104"
    default_model: str = "yolov5n_mitosis"
    worker_threads: int = 1
    batches_in_flight: int = Field(default=DEFAULT_BATCHES_IN_FLIGHT, ge=1)
    retry_budget_s: float = DEFAULT_RETRY.budget_s
    watch_location: str = Field(
        default="",
        description="s3://bucket/prefix, or a folder under the slide root, whose new slides become jobs; the "
        "aggregator's output root must be the slide root for a folder",
    )
    watch_poll_s: float = 5.0
    watch_settle_s: float = watch.DEFAULT_SETTLE_S
    results_location: str = Field(
        default="", description="s3://bucket/prefix where each job's exports are written, under its id"
    )


class BadRequestError(ValueError):
    """The request cannot be served as sent (HTTP 400)."""


class DependencyUnavailableError(RuntimeError):
    """A service the gateway needs for this answer is down or busy (HTTP 503); try again later."""


class UnsupportedMediaTypeError(ValueError):
    """The body is of a media type the endpoint does not take (HTTP 415)."""


class UnknownSlideError(LookupError):
    """No slide with that id (HTTP 404)."""


class SlideRefusedError(ValueError):
    """The slide cannot be scored (quality control refused it); `error_code` says which check."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class ResultNotReadyError(RuntimeError):
    """The job has no result (yet, or because it failed): HTTP 409."""


slides_metadata = MetaData()
slides_table = Table(
    "slides",
    slides_metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
    Column("location", Text, nullable=False),
    Column("sha256", String(64), nullable=True),
    Column("size_bytes", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class SlideOut(BaseModel):
    id: str
    name: str
    location: str
    sha256: str | None
    size_bytes: int | None


class RegisterSlide(BaseModel):
    location: str = Field(description="s3://bucket/key, or a path under the gateway's slide root")
    name: str | None = None


class JobOptions(BaseModel):
    mpp_um_per_px: float | None = Field(default=None, gt=0, le=4, description="only for slides without MPP")
    batch_size: int = Field(default=150, ge=1, le=300)
    field_diameter_mm: float = Field(default=0.55, gt=0)
    output_location: str | None = Field(
        default=None,
        description="s3://bucket/prefix (or a folder under the aggregator's output root) for result.json, "
        ".geojson and .csv; by default the gateway's results location",
    )

    @field_validator("output_location")
    @classmethod
    def _plain_location(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if is_s3_uri(value):
            try:
                parse_s3_uri(value, key_required=False)
            except objectstore.NoSuchObjectError as e:
                raise ValueError(str(e)) from e
            return value
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError("give s3://bucket/prefix or a relative folder without '..'")
        return value


class CreateJob(BaseModel):
    slide_id: str
    model: str | None = None
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
            error_code=slide_refused_code(job.error),
        )


def _slide_out(row: Any) -> SlideOut:
    return SlideOut(id=row.id, name=row.name, location=row.location, sha256=row.sha256, size_bytes=row.size_bytes)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.jobs = JobStore(self.engine)
        slides_metadata.create_all(self.engine)
        self.urls = ServiceUrls(
            settings.tiler_url, settings.preprocess_url, settings.detector_url, settings.aggregator_url
        )
        self.worker_config = WorkerConfig(
            max_in_flight=settings.batches_in_flight,
            retry=RetryPolicy(budget_s=settings.retry_budget_s),
            results_location=settings.results_location,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start_workers(self) -> None:
        for i in range(self.settings.worker_threads):
            thread = threading.Thread(target=self._work, args=(f"gateway-{uuid.uuid4().hex[:8]}-{i}",), daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.watch_location:
            watcher = Watcher(self._watch_source(), JobScorer(self))
            thread = threading.Thread(target=self._watch, args=(watcher,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _watch_source(self) -> SlideSource:
        location = self.settings.watch_location
        if is_s3_uri(location):
            return open_source(location)
        folder = self.settings.slide_root / location
        folder.mkdir(parents=True, exist_ok=True)
        return open_source(str(folder), self.settings.watch_settle_s)

    def _watch(self, watcher: Watcher) -> None:
        while not self._stop.is_set():
            try:
                watcher.poll()
            except (ObjectStoreError, OSError) as e:  # the store or folder is away: look again later
                log.warning("watching %s: %s", self.settings.watch_location, e)
            except Exception:  # keep watching whatever one look met; the log says what
                log.exception("watching %s", self.settings.watch_location)
            self._stop.wait(self.settings.watch_poll_s)

    def problems(self) -> list[str]:
        found = [] if self.settings.slide_root.is_dir() else [f"slide root {self.settings.slide_root} is missing"]
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as e:
            found.append(f"the job database does not answer: {e}")
        if S3Config.configured():
            found += objectstore.problems(S3Config.from_env())
        return found

    def local_location(self, path: str) -> str:
        """A watched local file's location as the services name it: relative to the slide root."""
        return str(Path(path).resolve().relative_to(self.settings.slide_root.resolve()))

    def _work(self, name: str) -> None:
        while not self._stop.is_set():
            try:
                run_worker(self.jobs, name, self.urls, self.worker_config, stop_when_idle=True)
            except Exception:  # keep the worker alive whatever one pass met; the log says what
                log.exception("worker %s", name)
            self._stop.wait(EVENT_POLL_S)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.engine.dispose()

    def register(self, body: RegisterSlide) -> SlideOut:
        if is_s3_uri(body.location):
            try:
                found = objectstore.stat(body.location, S3Config.from_env())
            except objectstore.NoSuchObjectError as e:
                raise BadRequestError(f"{body.location}: no such object; upload it, or check the key") from e
            size: int | None = found.size_bytes
        else:
            root = self.settings.slide_root.resolve()
            path = (root / body.location).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                raise BadRequestError(f"{body.location}: not a file under the slide root; upload it instead")
            size = path.stat().st_size
        return self.add_slide(body.name or body.location.rsplit("/", 1)[-1], body.location, None, size)

    async def upload(self, content_type: str, body: AsyncIterator[bytes], expected_sha256: str | None) -> SlideOut:
        """Stream an upload to disk, check it, then keep it under the slide root or put it in S3."""
        folder_id = uuid.uuid4().hex
        folder = self.settings.slide_root / "uploads" / folder_id
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise UploadStorageError(f"the gateway cannot store uploads under {folder.parent}: {e}") from e
        try:  # one clean-up for every way an upload can end early, a dropped connection included
            received = await receive_multipart(content_type, body, folder, self.settings.max_upload_bytes)
            if not received.name.lower().endswith(SLIDE_SUFFIXES):
                raise BadRequestError(
                    f"{received.name!r}: not a slide file name; use one ending in {', '.join(SLIDE_SUFFIXES)}"
                )
            if received.size_bytes == 0:
                raise BadRequestError(f"{received.name}: empty upload")
            if expected_sha256 and expected_sha256.lower() != received.sha256:
                raise BadRequestError(
                    f"{received.name}: checksum mismatch (sent {expected_sha256}, received {received.sha256})"
                )
            final = received.path.with_name(received.name)
            received.path.rename(final)
            location = str(final.relative_to(self.settings.slide_root))
            if self.settings.upload_location:
                location = f"{self.settings.upload_location.rstrip('/')}/{folder_id}/{received.name}"
                try:
                    await asyncio.to_thread(objectstore.put_file, location, final, S3Config.from_env())
                except (objectstore.ObjectStoreRefusedError, objectstore.NoSuchObjectError) as e:
                    # The gateway's own upload location, not the client's doing: an operator's problem.
                    raise objectstore.ObjectStoreUnavailableError(f"the upload location refuses uploads: {e}") from e
                shutil.rmtree(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.add_slide(received.name, location, received.sha256, received.size_bytes)

    def add_slide(self, name: str, location: str, sha256: str | None, size_bytes: int | None) -> SlideOut:
        from datetime import UTC, datetime

        slide_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(
                insert(slides_table).values(
                    id=slide_id,
                    name=name,
                    location=location,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    created_at=datetime.now(UTC),
                )
            )
        return self.slide(slide_id)

    def slide(self, slide_id: str) -> SlideOut:
        with self.engine.begin() as conn:
            row = conn.execute(select(slides_table).where(slides_table.c.id == slide_id)).one_or_none()
        if row is None:
            raise UnknownSlideError(f"no slide {slide_id!r}; register or upload it with POST /v1/slides")
        return _slide_out(row)

    def slides(self) -> list[SlideOut]:
        with self.engine.begin() as conn:
            rows = conn.execute(select(slides_table).order_by(slides_table.c.created_at.desc())).all()
        return [_slide_out(r) for r in rows]

    def result(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        refused = slide_refused_code(job.error) if job.state == FAILED else None
        if refused:
            raise SlideRefusedError(f"job {job_id} has no result: {job.error}", refused)
        if job.state != SUCCEEDED or job.result is None:
            reason = f"it failed: {job.error}" if job.error else f"it is {job.state}"
            raise ResultNotReadyError(f"job {job_id} has no result: {reason}")
        return job.result


@dataclass
class JobScorer:
    """Turns each watched slide into one job (keyed by its SHA-256), its exports next to the slide."""

    gateway: Gateway

    def score(self, source: SlideSource, slide: WrittenSlide, digest: str) -> dict[str, str]:
        g = self.gateway
        location = slide.location if is_s3_uri(slide.location) else g.local_location(slide.location)
        results = source.results_location(slide)
        output = results if is_s3_uri(results) else g.local_location(results)
        g.add_slide(slide.name.rsplit("/", 1)[-1], location, digest, None)
        options = JobOptions(output_location=output).model_dump()
        # One job per content and place: the same slide in another watched place gets its own results.
        key = "watch:" + hashlib.sha256(f"{output}\n{digest}".encode()).hexdigest()
        job, _ = g.jobs.create(location, g.settings.default_model, options, key)
        return {"state": watch.QUEUED, "job": job.id}

    def follow(self, entry: dict[str, str]) -> dict[str, str]:
        try:
            job = self.gateway.jobs.get(entry["job"])
        except UnknownJobError:  # the job database was replaced: nothing more to follow
            gone = {k: v for k, v in entry.items() if k != "job"}
            return {**gone, "state": watch.FAILED, "error": f"job {entry['job']} no longer exists"}
        if job.state == SUCCEEDED:
            return {**{k: v for k, v in entry.items() if k != "error"}, "state": watch.SCORED}
        if job.state in FINAL_STATES:
            return {**entry, "state": watch.FAILED, "error": job.error or f"the job was {job.state}"}
        return entry


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.start_workers()
        yield
        gateway.stop()

    app = service_app(
        "gateway",
        "The public mitoscope API: register or upload slides, start scoring jobs, follow their progress, "
        "fetch results as JSON, QuPath GeoJSON or CSV.",
        ready=gateway.problems,
        errors={
            BadRequestError: (400, "bad_request"),
            UploadError: (400, "bad_upload"),
            UploadTooLargeError: (413, "upload_too_large"),
            UnsupportedMediaTypeError: (415, "unsupported_media_type"),
            objectstore.ObjectStoreUnavailableError: (503, "storage_unavailable"),
            DependencyUnavailableError: (503, "dependency_unavailable"),
            UploadStorageError: (507, "insufficient_storage"),
            objectstore.ObjectStoreRefusedError: (422, "storage_refused"),
            objectstore.NoSuchObjectError: (422, "storage_location"),
            UnknownSlideError: (404, "unknown_slide"),
            UnknownJobError: (404, "unknown_job"),
            ResultNotReadyError: (409, "result_not_ready"),
            SlideRefusedError: (422, "slide_refused"),
            JobStateError: (409, "job_state"),
        },
        lifespan=lifespan,
    )
    app.state.gateway = gateway

    @app.post(
        "/v1/slides",
        status_code=201,
        summary="Upload a slide (multipart/form-data, field `file`) or register one by location (JSON)",
        tags=["slides"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                    "application/json": {"schema": RegisterSlide.model_json_schema()},
                },
            }
        },
    )
    async def add_slide(request: Request, gateway: GatewayDep) -> SlideOut:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_REGISTRATION_BYTES:
                    raise UploadTooLargeError(f"a registration is a small JSON object, not {len(raw)}+ bytes")
            try:
                body = RegisterSlide.model_validate_json(raw)
            except ValidationError as e:
                raise BadRequestError(f"registration: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e
            return await asyncio.to_thread(gateway.register, body)
        if content_type.startswith("multipart/form-data"):
            declared = request.headers.get("content-length")
            if declared is not None and int(declared) > settings.max_upload_bytes:
                raise UploadTooLargeError(f"{declared} bytes exceed the upload limit of {settings.max_upload_bytes}")
            return await gateway.upload(content_type, request.stream(), request.headers.get("x-content-sha256"))
        raise UnsupportedMediaTypeError(
            f"send the slide as multipart/form-data (curl -F file=@slide.svs) or register it with "
            f'application/json {{"location": ...}}, not {content_type or "no content type"}'
        )

    @app.get("/v1/slides", summary="Slides, newest first", tags=["slides"])
    def list_slides(gateway: GatewayDep) -> list[SlideOut]:
        return gateway.slides()

    @app.get("/v1/slides/{slide_id}", summary="One slide", tags=["slides"])
    def get_slide(slide_id: str, gateway: GatewayDep) -> SlideOut:
        return gateway.slide(slide_id)

    @app.post("/v1/jobs", status_code=202, summary="Start scoring a slide", tags=["jobs"])
    def create_job(
        body: CreateJob,
        gateway: GatewayDep,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JobOut:
        slide = gateway.slide(body.slide_id)
        options = body.options.model_dump()
        job, created = gateway.jobs.create(
            slide.location, body.model or settings.default_model, options, idempotency_key
        )
        if not created:
            response.status_code = 200
        return JobOut.of(job)

    @app.get("/v1/jobs", summary="Jobs, newest first", tags=["jobs"])
    def list_jobs(
        gateway: GatewayDep,
        state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[JobOut]:
        return [JobOut.of(job) for job in gateway.jobs.list(limit, state.value if state else None)]

    @app.get("/v1/jobs/{job_id}", summary="State and progress of a job", tags=["jobs"])
    def get_job(job_id: str, gateway: GatewayDep) -> JobOut:
        return JobOut.of(gateway.jobs.get(job_id))

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job", tags=["jobs"])
    def cancel_job(job_id: str, gateway: GatewayDep) -> JobOut:
        return JobOut.of(gateway.jobs.cancel(job_id))

    @app.post(
        "/v1/jobs/{job_id}/retry",
        summary="Queue a failed job again; it resumes from its checkpointed batches",
        tags=["jobs"],
    )
    def retry_job(job_id: str, gateway: GatewayDep) -> JobOut:
        return JobOut.of(gateway.jobs.requeue(job_id))

    @app.get(
        "/v1/jobs/{job_id}/events",
        summary="Progress as server-sent events until the job ends",
        tags=["jobs"],
        response_class=StreamingResponse,
    )
    async def events(job_id: str, gateway: GatewayDep) -> StreamingResponse:
        gateway.jobs.get(job_id)  # 404 before the stream starts

        async def stream() -> AsyncIterator[str]:
            last = None
            while True:
                job = JobOut.of(await asyncio.to_thread(gateway.jobs.get, job_id))
                if job != last:
                    yield f"event: progress\ndata: {job.model_dump_json()}\n\n"
                    last = job
                if job.state in FINAL_STATES:
                    yield f"event: end\ndata: {job.model_dump_json()}\n\n"
                    return
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/events/s3", summary="S3 / MinIO bucket notifications: score each new slide once", tags=["batch"])
    def s3_events(event: dict[str, Any], gateway: GatewayDep) -> list[JobOut]:
        records = event.get("Records")
        if not isinstance(records, list):
            raise BadRequestError("expected an S3 event notification with a Records list")
        jobs = []
        for i, record in enumerate(records):
            try:
                name = record["eventName"]
                bucket = record["s3"]["bucket"]["name"]
                key = unquote_plus(record["s3"]["object"]["key"])
                etag = record["s3"]["object"].get("eTag", "")
            except (KeyError, TypeError) as e:
                raise BadRequestError(f"Records[{i}]: missing {e}") from e
            if not name.startswith(("s3:ObjectCreated", "ObjectCreated")) or not key.lower().endswith(SLIDE_SUFFIXES):
                continue
            location = f"s3://{bucket}/{key}"
            # The same object content (same ETag) is one job, however often S3 tells us about it.
            existing = gateway.jobs.find_by_key(f"s3:{location}@{etag}")
            if existing is not None:
                jobs.append(JobOut.of(existing))
                continue
            slide = gateway.add_slide(key.rsplit("/", 1)[-1], location, None, record["s3"]["object"].get("size"))
            job, _ = gateway.jobs.create(
                slide.location, settings.default_model, JobOptions().model_dump(), f"s3:{location}@{etag}"
            )
            jobs.append(JobOut.of(job))
        return jobs

    @app.get("/v1/jobs/{job_id}/result", summary="The result (JSON)", tags=["results"])
    def result(job_id: str, gateway: GatewayDep) -> dict[str, Any]:
        return gateway.result(job_id)

    @app.get(
        "/v1/jobs/{job_id}/result.geojson", summary="The result for QuPath", tags=["results"], response_class=Response
    )
    def result_geojson(job_id: str, gateway: GatewayDep) -> Response:
        return Response(json.dumps(geojson_document(gateway.result(job_id))), media_type="application/geo+json")

    @app.get("/v1/jobs/{job_id}/result.csv", summary="One row per mitosis", tags=["results"], response_class=Response)
    def result_csv(job_id: str, gateway: GatewayDep) -> Response:
        return Response(csv_text(gateway.result(job_id)), media_type="text/csv")

    @app.get(
        "/v1/jobs/{job_id}/overview.png",
        summary="The slide with every mitosis and the hotspot",
        tags=["results"],
        response_class=Response,
    )
    def result_overview(job_id: str, gateway: GatewayDep) -> Response:
        result = gateway.result(job_id)
        location = gateway.jobs.get(job_id).slide_location
        try:
            response = httpx.get(f"{settings.tiler_url}/v1/overview.png", params={"location": location}, timeout=120)
        except httpx.TransportError as e:
            raise DependencyUnavailableError(f"job {job_id}: the tiler cannot be reached to draw the slide: {e}") from e
        if response.status_code in (429, 502, 503, 504):
            raise DependencyUnavailableError(f"job {job_id}: the tiler cannot draw the slide now: {response.text}")
        if response.status_code != 200:
            raise ResultNotReadyError(f"job {job_id}: the tiler cannot draw the slide: {response.text}")
        return Response(overview_png(result, response.content), media_type="image/png")

    return app
