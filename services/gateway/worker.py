"""A job worker: claims jobs from the store and scores them through the services, batch by batch.

    python -m services.gateway.worker [--stop-when-idle] (see --help)

Configured like the gateway, from the same `Settings` (GATEWAY_* variables: the job database, the
services, the retry budget, the results location); a flag overrides its variable.

Each finished batch is checkpointed with the lease renewed in the same transaction; a worker that
takes over a job whose previous worker died skips the checkpointed batches, so nothing is lost and
nothing is counted twice. A lease keeper renews the lease while the job runs; a job whose lease is
lost (cancelled, or taken over) is abandoned. While a service, Triton or S3 is down the failing
call waits and is retried with backoff; past the retry budget the job fails with the reason, its
checkpoints kept for `POST /v1/jobs/{id}/retry`. A busy service (429) is waited for as it asks.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import httpx
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from services.common.options import DEFAULT_BATCH_SIZE, DEFAULT_FIELD_DIAMETER_MM
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.gateway.database import make_engine
from services.gateway.jobs import DEFAULT_LEASE_S, Job, JobStore, LeaseLostError
from services.gateway.orchestrate import (
    DEFAULT_BATCHES_IN_FLIGHT,
    DEFAULT_TIMEOUT_S,
    ServiceError,
    ServiceUrls,
    SlideSession,
    detect_in_flight,
)
from services.gateway.retry import DEFAULT_RETRY, GaveUpError, RetryPolicy, StoppedError, with_retries
from services.gateway.settings import Settings
from services.tiler.errors import QC_REFUSALS

T = TypeVar("T")

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.5
STORE_DOWN_WAIT_S = 5.0


class LeaseKeeper:
    """Renews a job's lease every third of its length while the job runs, however long one step
    takes (a slide download, a retry wait). When the lease is lost (cancelled, or taken over by
    another replica) it sets `stop` and `check` raises LeaseLostError."""

    def __init__(self, store: JobStore, job_id: str, worker: str, lease_s: float, stop: threading.Event) -> None:
        self.store, self.job_id, self.worker, self.lease_s, self.stop = store, job_id, worker, lease_s, stop
        self.lost: LeaseLostError | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                self.store.renew(self.job_id, self.worker, self.lease_s)
            except LeaseLostError as e:
                self.lost = e
                self.stop.set()
                return
            except SQLAlchemyError as e:  # the store blinked: the next renewal may still be in time
                log.warning("renewing the lease of job %s: %s", self.job_id, e)

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost


@dataclass(frozen=True)
class WorkerConfig:
    lease_s: float = DEFAULT_LEASE_S
    timeout_s: float = DEFAULT_TIMEOUT_S  # one HTTP call to a service
    max_in_flight: int = DEFAULT_BATCHES_IN_FLIGHT
    retry: RetryPolicy = DEFAULT_RETRY
    results_location: str = ""  # each job's exports go to <results_location>/<job id> when set


def run_job(store: JobStore, job: Job, worker: str, urls: ServiceUrls, config: WorkerConfig = WorkerConfig()) -> None:
    """Score one claimed job; its exports go to its `output_location` option, else under the
    configured results location, else only into the job store."""
    options = job.options
    output_location = options.get("output_location") or (
        f"{config.results_location.rstrip('/')}/{job.id}" if config.results_location else ""
    )
    stop = threading.Event()
    started_s = time.perf_counter()  # this attempt's: a resumed job's timing covers the resumed part
    try:
        with (
            LeaseKeeper(store, job.id, worker, config.lease_s, stop) as lease,
            httpx.Client(timeout=config.timeout_s) as client,
        ):

            def run(step: Callable[[], T], what: str) -> T:
                return with_retries(step, what, config.retry, lease.check, stop=stop)

            session = SlideSession(
                client,
                urls,
                job.slide_location,
                job.model,
                options.get("mpp_um_per_px"),
                int(options.get("batch_size", DEFAULT_BATCH_SIZE)),
                float(options.get("field_diameter_mm", DEFAULT_FIELD_DIAMETER_MM)),
                output_location,
                run,
            )
            done = set(store.checkpoints(job.id))
            tiles_done = sum(session.tiles_in(i) for i in done)
            todo = [i for i in range(session.batch_count) if i not in done]
            for batch_index, found in detect_in_flight(session.detect_batch, todo, config.max_in_flight, stop):
                tiles_done += session.tiles_in(batch_index)
                store.checkpoint(
                    job.id,
                    worker,
                    batch_index,
                    found.SerializeToString(),
                    tiles_done,
                    session.total_tiles,
                    config.lease_s,
                )
            payloads = store.checkpoints(job.id)
            detections = [pb.Detections.FromString(payloads[i]) for i in range(session.batch_count)]
            store.finish(job.id, worker, session.aggregate(detections, started_s))
    except (LeaseLostError, StoppedError) as e:
        log.warning("abandoning job %s: %s", job.id, e)
    except ServiceError as e:
        _fail(store, job, worker, failure_text(e), refusal_code(e))
    except (GaveUpError, httpx.HTTPError) as e:
        _fail(store, job, worker, str(e))
    except SQLAlchemyError as e:  # the job store blinked: leave the job to resume from its checkpoints
        log.warning("abandoning job %s, the job store failed: %s", job.id, e)
    except Exception as e:  # a bug, not the slide's fault: fail the job visibly rather than loop on it
        log.exception("job %s failed unexpectedly", job.id)
        _fail(store, job, worker, f"internal error in the worker: {e!r}")


SLIDE_REFUSAL_CODES = frozenset(error.code for error in QC_REFUSALS)


def refusal_code(error: ServiceError) -> str | None:
    """The quality-control code of a slide the tiler refused; None for any other failure."""
    return error.code if error.status == 422 and error.code in SLIDE_REFUSAL_CODES else None


def failure_text(error: ServiceError) -> str:
    """What a failed job records; a refused slide says so first."""
    code = refusal_code(error)
    return f"slide refused ({code}): {error}" if code else str(error)


def _fail(store: JobStore, job: Job, worker: str, reason: str, code: str | None = None) -> None:
    try:
        store.fail(job.id, worker, reason, code)
    except LeaseLostError as e:  # cancelled or taken over meanwhile: not ours to fail any more
        log.warning("job %s not marked failed (%s): %s", job.id, reason, e)
    except SQLAlchemyError as e:  # the lease runs out and another attempt meets the same failure
        log.warning("job %s not marked failed (%s), the job store failed: %s", job.id, reason, e)


def run_worker(
    store: JobStore, worker: str, urls: ServiceUrls, config: WorkerConfig = WorkerConfig(), stop_when_idle: bool = False
) -> None:
    while True:
        try:
            job = store.claim(worker, config.lease_s)
        except SQLAlchemyError as e:
            log.warning("the job store does not answer (%s); trying again in %.0f s", e, STORE_DOWN_WAIT_S)
            if stop_when_idle:
                return
            time.sleep(STORE_DOWN_WAIT_S)
            continue
        if job is None:
            if stop_when_idle:
                return
            time.sleep(IDLE_POLL_S)
            continue
        log.info("worker %s runs job %s (attempt %d)", worker, job.id, job.attempts)
        run_job(store, job, worker, urls, config)


def worker_config(settings: Settings) -> WorkerConfig:
    """The workers' configuration, in the gateway and in worker processes alike."""
    return WorkerConfig(
        lease_s=settings.lease_s,
        max_in_flight=settings.batches_in_flight,
        retry=RetryPolicy(budget_s=settings.retry_budget_s),
        results_location=settings.results_location,
    )


# Command-line flags over the gateway's settings: flag -> Settings field. Unset flags keep the
# GATEWAY_* environment variables, then the gateway's defaults.
FLAGS = {
    "database": "database_url",
    "tiler": "tiler_url",
    "preprocess": "preprocess_url",
    "detector": "detector_url",
    "aggregator": "aggregator_url",
    "lease_s": "lease_s",
    "batches_in_flight": "batches_in_flight",
    "retry_budget_s": "retry_budget_s",
    "results_location": "results_location",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.gateway.worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database", help="the job database (default: GATEWAY_DATABASE_URL, as the gateway)")
    for name in ("tiler", "preprocess", "detector", "aggregator"):
        parser.add_argument(f"--{name}", help=f"base URL of the {name} service (default: GATEWAY_{name.upper()}_URL)")
    parser.add_argument("--lease-s", type=float, help="how long a job's lease lasts unrenewed (GATEWAY_LEASE_S)")
    parser.add_argument("--batches-in-flight", type=int, help="batches on their way at once")
    parser.add_argument(
        "--retry-budget-s", type=float, help="how long a job waits out a service, Triton or S3 outage before it fails"
    )
    parser.add_argument("--results-location", help="s3://bucket/prefix (or aggregator folder) for each job's exports")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--stop-when-idle", action="store_true", help="exit when no job is left")
    args = parser.parse_args(argv)
    given = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    try:
        settings = Settings(**given)
    except ValidationError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = JobStore(make_engine(settings.database_url))
    run_worker(store, args.name, settings.service_urls(), worker_config(settings), args.stop_when_idle)


if __name__ == "__main__":
    main()
