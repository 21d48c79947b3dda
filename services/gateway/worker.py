"""A job worker: claims jobs from the store and scores them through the services, batch by batch.

    python -m services.gateway.worker --database sqlite:///jobs.db --tiler http://... (see --help)

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
from sqlalchemy.exc import SQLAlchemyError

from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.gateway.jobs import DEFAULT_LEASE_S, Job, JobStore, LeaseLostError, make_engine
from services.gateway.orchestrate import (
    DEFAULT_BATCHES_IN_FLIGHT,
    DEFAULT_TIMEOUT_S,
    ServiceError,
    ServiceUrls,
    SlideSession,
    detect_in_flight,
)
from services.tiler.errors import QC_REFUSALS

T = TypeVar("T")

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.5
STORE_DOWN_WAIT_S = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a job waits out a transient failure (a service, Triton or S3 down) or a busy service.

    Outages: delays double from `first_delay_s` up to `max_delay_s`; after `budget_s` of failing
    the step fails with the last error. Busy (429): waits as long as the service's `Retry-After`
    says, counted against the separate `busy_budget_s`, since a busy cluster is working.
    Checkpointed batches are kept either way."""

    budget_s: float = 600.0
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    busy_budget_s: float = 3600.0


DEFAULT_RETRY = RetryPolicy()


class GaveUpError(RuntimeError):
    """A transient failure outlasted the retry budget."""


class StoppedError(RuntimeError):
    """A retry was abandoned: a sibling batch failed, or the job's lease was lost."""


def with_retries(
    step: Callable[[], T],
    what: str,
    policy: RetryPolicy = DEFAULT_RETRY,
    while_waiting: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
) -> T:
    """Run `step`, retrying transient failures with backoff until the policy's budget is spent.

    `while_waiting` runs before each wait (the worker checks its lease there); `stop` ends the
    waiting early with StoppedError. Permanent errors propagate at once."""
    started = clock()
    busy_s = 0.0
    delay = policy.first_delay_s
    while True:
        if stop is not None and stop.is_set():  # cancelled, taken over, or a sibling failed: no more calls
            raise StoppedError(f"{what}: stopped")
        try:
            return step()
        except (ServiceError, httpx.TransportError) as e:
            if isinstance(e, ServiceError) and not e.transient:
                raise
            if isinstance(e, ServiceError) and e.status == 429:
                wait_s = e.retry_after_s or policy.first_delay_s
                if busy_s + wait_s > policy.busy_budget_s:
                    raise GaveUpError(f"{what}: the services stayed busy for {busy_s:.0f} s: {e}") from e
                busy_s += wait_s
            else:
                failing_s = clock() - started - busy_s
                if failing_s + delay > policy.budget_s:
                    raise GaveUpError(f"{what}: still failing after {failing_s:.0f} s of retries: {e}") from e
                wait_s, delay = delay, min(delay * 2, policy.max_delay_s)
            log.warning("%s failed (%s); retrying in %.1f s", what, e, wait_s)
            while_waiting()
            if stop is None:
                sleep(wait_s)
            elif stop.wait(wait_s):
                raise StoppedError(f"{what}: stopped while waiting to retry") from e


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
                int(options.get("batch_size", 150)),
                float(options.get("field_diameter_mm", 0.0)),
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
            store.finish(job.id, worker, session.aggregate(detections))
    except (LeaseLostError, StoppedError) as e:
        log.warning("abandoning job %s: %s", job.id, e)
    except ServiceError as e:
        _fail(store, job, worker, failure_text(e))
    except (GaveUpError, httpx.HTTPError) as e:
        _fail(store, job, worker, str(e))
    except SQLAlchemyError as e:  # the job store blinked: leave the job to resume from its checkpoints
        log.warning("abandoning job %s, the job store failed: %s", job.id, e)
    except Exception as e:  # a bug, not the slide's fault: fail the job visibly rather than loop on it
        log.exception("job %s failed unexpectedly", job.id)
        _fail(store, job, worker, f"internal error in the worker: {e!r}")


SLIDE_REFUSAL_CODES = frozenset(error.code for error in QC_REFUSALS)


def failure_text(error: ServiceError) -> str:
    """What a failed job records; a slide the tiler refused keeps the refusal's code."""
    if error.status == 422 and error.code in SLIDE_REFUSAL_CODES:
        return f"slide refused ({error.code}): {error}"
    return str(error)


def _fail(store: JobStore, job: Job, worker: str, reason: str) -> None:
    try:
        store.fail(job.id, worker, reason)
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


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.gateway.worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database", default=os.environ.get("GATEWAY_DATABASE_URL", "sqlite:///mitoscope-jobs.db"))
    for name in ("tiler", "preprocess", "detector", "aggregator"):
        parser.add_argument(f"--{name}", required=True, help=f"base URL of the {name} service")
    parser.add_argument("--lease-s", type=float, default=DEFAULT_LEASE_S)
    # Defaults come from the gateway's environment variables, so workers and gateway share one config.
    parser.add_argument(
        "--batches-in-flight",
        type=_at_least_one,
        default=int(os.environ.get("GATEWAY_BATCHES_IN_FLIGHT", DEFAULT_BATCHES_IN_FLIGHT)),
        help="batches on their way at once",
    )
    parser.add_argument(
        "--retry-budget-s",
        type=float,
        default=float(os.environ.get("GATEWAY_RETRY_BUDGET_S", DEFAULT_RETRY.budget_s)),
        help="how long a job waits out a service, Triton or S3 outage before it fails",
    )
    parser.add_argument(
        "--results-location",
        default=os.environ.get("GATEWAY_RESULTS_LOCATION", ""),
        help="s3://bucket/prefix (or aggregator folder) for each job's exports",
    )
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--stop-when-idle", action="store_true", help="exit when no job is left")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    urls = ServiceUrls(args.tiler, args.preprocess, args.detector, args.aggregator)
    config = WorkerConfig(
        lease_s=args.lease_s,
        max_in_flight=args.batches_in_flight,
        retry=RetryPolicy(budget_s=args.retry_budget_s),
        results_location=args.results_location,
    )
    run_worker(JobStore(make_engine(args.database)), args.name, urls, config, args.stop_when_idle)


if __name__ == "__main__":
    main()
