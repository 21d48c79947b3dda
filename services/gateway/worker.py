"""A job worker: claims jobs from the store and scores them through the services, batch by batch.

    python -m services.gateway.worker --database sqlite:///jobs.db --tiler http://... (see --help)

Each finished batch is checkpointed with the lease renewed in the same transaction; a worker that
takes over a job whose previous worker died skips the checkpointed batches, so nothing is lost and
nothing is counted twice. A job whose lease is lost (cancelled, or taken over) is abandoned.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import httpx

from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.gateway.jobs import DEFAULT_LEASE_S, Job, JobStore, LeaseLostError, make_engine
from services.gateway.orchestrate import DEFAULT_TIMEOUT_S, ServiceError, ServiceUrls, SlideSession

T = TypeVar("T")

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.5
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)  # transient failures (a service or Triton down) back off, then fail


def with_retries(step: Callable[[], T], what: str, delays_s: tuple[float, ...] = RETRY_DELAYS_S) -> T:
    """Run `step`, retrying transient failures with backoff; the last failure propagates."""
    for delay in (*delays_s, None):
        try:
            return step()
        except (ServiceError, httpx.TransportError) as e:
            if delay is None or (isinstance(e, ServiceError) and not e.transient):
                raise
            log.warning("%s failed (%s); retrying in %.0f s", what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def run_job(
    store: JobStore,
    job: Job,
    worker: str,
    urls: ServiceUrls,
    lease_s: float = DEFAULT_LEASE_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    options = job.options
    try:
        with httpx.Client(timeout=timeout_s) as client:
            session = with_retries(
                lambda: SlideSession(
                    client,
                    urls,
                    job.slide_location,
                    job.model,
                    options.get("mpp_um_per_px"),
                    int(options.get("batch_size", 150)),
                    float(options.get("field_diameter_mm", 0.0)),
                ),
                "preparing the slide",
            )
            done = store.checkpoints(job.id)
            for batch_index in range(session.batch_count):
                if batch_index in done:
                    continue
                found = with_retries(partial(session.detect_batch, batch_index), f"batch {batch_index}")
                store.checkpoint(
                    job.id,
                    worker,
                    batch_index,
                    found.SerializeToString(),
                    session.tiles_through(batch_index),
                    session.total_tiles,
                    lease_s,
                )
            payloads = store.checkpoints(job.id)
            detections = [pb.Detections.FromString(payloads[i]) for i in range(session.batch_count)]
            store.finish(job.id, worker, with_retries(lambda: session.aggregate(detections), "aggregation"))
    except LeaseLostError as e:
        log.warning("abandoning job %s: %s", job.id, e)
    except (ServiceError, httpx.HTTPError) as e:
        store.fail(job.id, worker, str(e))


def run_worker(
    store: JobStore, worker: str, urls: ServiceUrls, lease_s: float = DEFAULT_LEASE_S, stop_when_idle: bool = False
) -> None:
    while True:
        job = store.claim(worker, lease_s)
        if job is None:
            if stop_when_idle:
                return
            time.sleep(IDLE_POLL_S)
            continue
        log.info("worker %s runs job %s (attempt %d)", worker, job.id, job.attempts)
        run_job(store, job, worker, urls, lease_s)


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
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--stop-when-idle", action="store_true", help="exit when no job is left")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    urls = ServiceUrls(args.tiler, args.preprocess, args.detector, args.aggregator)
    run_worker(JobStore(make_engine(args.database)), args.name, urls, args.lease_s, args.stop_when_idle)


if __name__ == "__main__":
    main()
