"""Durable scoring jobs: state, progress, per-batch checkpoints and worker leases (SQLAlchemy).

SQLite by default, PostgreSQL when configured. A worker *claims* a job with a lease (a queued
job, or a running one whose lease has expired because its worker died); on PostgreSQL the claim
uses `FOR UPDATE SKIP LOCKED` so replicas never claim the same row, on SQLite the whole claim
runs in one `BEGIN IMMEDIATE` transaction. Every finished batch's detections are stored as a
checkpoint keyed by (job, batch index) with the lease checked in the same transaction, so a
resumed job skips what is done, and a batch written twice (a slow worker and its successor) is
kept once.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from services.gateway.database import add_missing_columns

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
DEFAULT_LEASE_S = 60.0

metadata = MetaData()
jobs_table = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("idempotency_key", String(200), unique=True, nullable=True),
    Column("slide_location", Text, nullable=False),
    Column("model", String(200), nullable=False),
    Column("options", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("tiles_done", Integer, nullable=False, default=0),
    Column("tiles_total", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    # This attempt's start and the tiles already done then, for the rate behind the ETA.
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("tiles_at_claim", Integer, nullable=True),
    Column("error", Text, nullable=True),
    # Why the slide was refused (not_brightfield, not_he, ...), when quality control refused it.
    Column("error_code", String(64), nullable=True),
    Column("result", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
checkpoints_table = Table(
    "checkpoints",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("batch_index", Integer, primary_key=True),
    Column("payload", LargeBinary, nullable=False),
    Column("worker", String(200), nullable=False),
)


class JobError(Exception):
    """Base class of job store errors."""


class UnknownJobError(JobError):
    """No job with that id (HTTP 404)."""


class JobStateError(JobError):
    """The job is not in a state that allows the request (HTTP 409)."""


class LeaseLostError(JobError):
    """The worker no longer holds the job's lease: another replica took it over."""


@dataclass(frozen=True)
class Job:
    id: str
    idempotency_key: str | None
    slide_location: str
    model: str
    options: dict[str, Any]
    state: str
    tiles_done: int
    tiles_total: int
    attempts: int
    lease_owner: str | None
    error: str | None
    error_code: str | None  # a slide refusal's code
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None = None
    tiles_at_claim: int = 0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at this attempt's rate so far, as of the last checkpoint; None before one."""
        if self.state != RUNNING or self.claimed_at is None or not self.tiles_total:
            return None
        done = self.tiles_done - self.tiles_at_claim
        elapsed_s = (self.updated_at - self.claimed_at).total_seconds()
        if done <= 0 or elapsed_s <= 0:
            return None
        return round((self.tiles_total - self.tiles_done) * elapsed_s / done, 1)


def _now() -> datetime:
    return datetime.now(UTC)


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        idempotency_key=row.idempotency_key,
        slide_location=row.slide_location,
        model=row.model,
        options=json.loads(row.options),
        state=row.state,
        tiles_done=row.tiles_done,
        tiles_total=row.tiles_total,
        attempts=row.attempts,
        lease_owner=row.lease_owner,
        error=row.error,
        error_code=row.error_code,
        result=json.loads(row.result) if row.result else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        claimed_at=row.claimed_at,
        tiles_at_claim=row.tiles_at_claim or 0,
    )


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        metadata.create_all(engine)
        add_missing_columns(engine, jobs_table)

    def create(
        self, slide_location: str, model: str, options: dict[str, Any], idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """A new queued job, or the existing one for the same idempotency key (created=False)."""
        now = _now()
        job_id = str(uuid.uuid4())
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(jobs_table).values(
                        id=job_id,
                        idempotency_key=idempotency_key,
                        slide_location=slide_location,
                        model=model,
                        options=json.dumps(options, sort_keys=True),
                        state=QUEUED,
                        tiles_done=0,
                        tiles_total=0,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            with self.engine.begin() as conn:
                row = conn.execute(select(jobs_table).where(jobs_table.c.idempotency_key == idempotency_key)).one()
            return _job(row), False
        return self.get(job_id), True

    def get(self, job_id: str) -> Job:
        with self.engine.begin() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).one_or_none()
        if row is None:
            raise UnknownJobError(f"no job {job_id!r}")
        return _job(row)

    def find_by_key(self, idempotency_key: str) -> Job | None:
        with self.engine.begin() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.idempotency_key == idempotency_key)).one_or_none()
        return None if row is None else _job(row)

    def list(self, limit: int = 100, state: str | None = None) -> list[Job]:
        """The newest jobs first, optionally only those in one state."""
        query = select(jobs_table).order_by(jobs_table.c.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(jobs_table.c.state == state)
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        return [_job(r) for r in rows]

    def claim(self, worker: str, lease_s: float = DEFAULT_LEASE_S) -> Job | None:
        """Take the oldest queued job, or a running one whose lease expired; None when there is none."""
        now = _now()
        claimable = or_(
            jobs_table.c.state == QUEUED, and_(jobs_table.c.state == RUNNING, jobs_table.c.lease_expires_at < now)
        )
        query = select(jobs_table.c.id).where(claimable).order_by(jobs_table.c.created_at).limit(1)
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            job_id = conn.execute(query).scalar_one_or_none()
            if job_id is None:
                return None
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id)
                .values(
                    state=RUNNING,
                    lease_owner=worker,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    attempts=jobs_table.c.attempts + 1,
                    claimed_at=now,
                    tiles_at_claim=jobs_table.c.tiles_done,
                    updated_at=now,
                )
            )
        return self.get(job_id)

    def _holding(self, job_id: str, worker: str) -> Any:
        return and_(jobs_table.c.id == job_id, jobs_table.c.lease_owner == worker, jobs_table.c.state == RUNNING)

    def renew(self, job_id: str, worker: str, lease_s: float = DEFAULT_LEASE_S) -> None:
        """Extend the lease. `updated_at` is left alone: it marks progress, which the ETA reads."""
        now = _now()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(jobs_table)
                .where(self._holding(job_id, worker))
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            ).rowcount
        if not changed:
            raise LeaseLostError(f"job {job_id}: {worker} no longer holds its lease")

    def checkpoint(
        self,
        job_id: str,
        worker: str,
        batch_index: int,
        payload: bytes,
        tiles_done: int,
        tiles_total: int,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        """Store one batch's detections and progress, and renew the lease, in one transaction."""
        now = _now()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(jobs_table)
                .where(self._holding(job_id, worker))
                .values(
                    tiles_done=tiles_done,
                    tiles_total=tiles_total,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    updated_at=now,
                )
            ).rowcount
            if not changed:
                raise LeaseLostError(f"job {job_id}: {worker} lost its lease before batch {batch_index} was saved")
            exists = conn.execute(
                select(checkpoints_table.c.batch_index).where(
                    and_(checkpoints_table.c.job_id == job_id, checkpoints_table.c.batch_index == batch_index)
                )
            ).first()
            if exists is None:
                conn.execute(
                    insert(checkpoints_table).values(
                        job_id=job_id, batch_index=batch_index, payload=payload, worker=worker
                    )
                )

    def checkpoints(self, job_id: str) -> dict[int, bytes]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(checkpoints_table.c.batch_index, checkpoints_table.c.payload).where(
                    checkpoints_table.c.job_id == job_id
                )
            ).all()
        return {int(r.batch_index): bytes(r.payload) for r in rows}

    def finish(self, job_id: str, worker: str, result: dict[str, Any]) -> None:
        self._close(job_id, worker, SUCCEEDED, result=json.dumps(result))

    def fail(self, job_id: str, worker: str, error: str, error_code: str | None = None) -> None:
        self._close(job_id, worker, FAILED, error=error, error_code=error_code)

    def _close(self, job_id: str, worker: str, state: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(jobs_table)
                .where(self._holding(job_id, worker))
                .values(state=state, lease_owner=None, lease_expires_at=None, updated_at=_now(), **values)
            ).rowcount
        if not changed:
            raise LeaseLostError(f"job {job_id}: {worker} no longer holds its lease")

    def requeue(self, job_id: str) -> Job:
        """Queue a failed job again; its checkpointed batches are kept, so it resumes where it stopped."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(jobs_table)
                .where(and_(jobs_table.c.id == job_id, jobs_table.c.state == FAILED))
                .values(state=QUEUED, error=None, error_code=None, updated_at=_now())
            ).rowcount
        job = self.get(job_id)
        if not changed:
            raise JobStateError(f"job {job_id} is {job.state}: only a failed job can be retried")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not finished; a worker notices at its next checkpoint."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(and_(jobs_table.c.id == job_id, jobs_table.c.state.notin_(FINAL_STATES)))
                .values(state=CANCELLED, lease_owner=None, lease_expires_at=None, updated_at=_now())
            )
        return self.get(job_id)
