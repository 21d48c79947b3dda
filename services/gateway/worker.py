"""A job worker: claims jobs from the store and scores them through the services, batch by batch.

    python -m services.gateway.worker --database sqlite:///jobs.db --tiler http://... (see --help)

Each finished batch is checkpointed with the lease renewed in the same transaction; a worker that
takes over a job whose previous worker died skips the checkpointed batches, so nothing is lost and
nothing is counted twice. A job whose lease is lost (cancelled, or taken over) is abandoned. While
a service, Triton or S3 is down the job waits (lease renewed) and retries with backoff; past the
retry budget it fails with the reason, its checkpoints kept for `POST /v1/jobs/{id}/retry`.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

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

T = TypeVar("T")

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """How long a job waits out a transient failure (a service, Triton or S3 down, or busy).

    Delays double from `first_delay_s` up to `max_delay_s`; after `budget_s` of failing, the step
    fails with the last error. Checkpointed batches are kept either way."""

    budget_s: float = 600.0
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0


DEFAULT_RETRY = RetryPolicy()


class GaveUpError(RuntimeError):
    """A transient failure outlasted the retry budget."""


def with_retries(
    step: Callable[[], T],
    what: str,
    policy: RetryPolicy = DEFAULT_RETRY,
    while_waiting: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `step`, retrying transient failures with backoff until the policy's budget is spent.

    `while_waiting` runs before each wait (the worker renews its lease there, so a long outage
    does not hand the job to another replica). Permanent errors propagate at once."""
    started = clock()
    delay = policy.first_delay_s
    while True:
        try:
            return step()
        except (ServiceError, httpx.TransportError) as e:
            if isinstance(e, ServiceError) and not e.transient:
                raise
            waited = clock() - started
            if waited + delay > policy.budget_s:
                raise GaveUpError(f"{what}: still failing after {waited:.0f} s of retries: {e}") from e
            log.warning("%s failed (%s); retrying in %.0f s", what, e, delay)
            while_waiting()
            sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)


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
    options, lease_s = job.options, config.lease_s
    output_location = options.get("output_location") or (
        f"{config.results_location.rstrip('/')}/{job.id}" if config.results_location else ""
    )
    # Waits never outlast half a lease, and the lease is renewed before each one.
    retry = RetryPolicy(
        config.retry.budget_s, min(config.retry.first_delay_s, lease_s / 2), min(config.retry.max_delay_s, lease_s / 2)
    )

    def renew() -> None:
        store.renew(job.id, worker, lease_s)

    try:
        with httpx.Client(timeout=config.timeout_s) as client:
            session = with_retries(
                lambda: SlideSession(
                    client,
                    urls,
                    job.slide_location,
                    job.model,
                    options.get("mpp_um_per_px"),
                    int(options.get("batch_size", 150)),
                    float(options.get("field_diameter_mm", 0.0)),
                    output_location,
                ),
                "preparing the slide",
                retry,
                renew,
            )
            done = set(store.checkpoints(job.id))
            tiles_done = sum(session.tiles_in(i) for i in done)

            def detect(batch_index: int) -> pb.Detections:
                return with_retries(lambda: session.detect_batch(batch_index), f"batch {batch_index}", retry, renew)

            todo = [i for i in range(session.batch_count) if i not in done]
            for batch_index, found in detect_in_flight(detect, todo, config.max_in_flight):
                tiles_done += session.tiles_in(batch_index)
                store.checkpoint(
                    job.id,
                    worker,
                    batch_index,
                    found.SerializeToString(),
                    tiles_done,
                    session.total_tiles,
                    lease_s,
                )
            payloads = store.checkpoints(job.id)
            detections = [pb.Detections.FromString(payloads[i]) for i in range(session.batch_count)]
            store.finish(
                job.id, worker, with_retries(lambda: session.aggregate(detections), "aggregation", retry, renew)
            )
    except LeaseLostError as e:
        log.warning("abandoning job %s: %s", job.id, e)
    except (ServiceError, GaveUpError, httpx.HTTPError) as e:
        store.fail(job.id, worker, str(e))


def run_worker(
    store: JobStore, worker: str, urls: ServiceUrls, config: WorkerConfig = WorkerConfig(), stop_when_idle: bool = False
) -> None:
    while True:
        job = store.claim(worker, config.lease_s)
        if job is None:
            if stop_when_idle:
                return
            time.sleep(IDLE_POLL_S)
            continue
        log.info("worker %s runs job %s (attempt %d)", worker, job.id, job.attempts)
        run_job(store, job, worker, urls, config)


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
        type=int,
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
