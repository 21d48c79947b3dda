"""The job store on SQLite and, when TEST_DATABASE_URL is set, on a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from services.gateway.jobs import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobStateError,
    JobStore,
    LeaseLostError,
    UnknownJobError,
)


def test_create_is_idempotent_by_key(store: JobStore) -> None:
    first, created = store.create("case.svs", "yolov5n_mitosis", {"batch_size": 16}, idempotency_key="k1")
    again, created_again = store.create("case.svs", "yolov5n_mitosis", {"batch_size": 16}, idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    other, _ = store.create("case.svs", "yolov5n_mitosis", {})
    assert other.id != first.id and other.state == QUEUED
    with pytest.raises(UnknownJobError):
        store.get("no-such-job")


def test_a_lease_is_exclusive_until_it_expires(store: JobStore) -> None:
    job, _ = store.create("case.svs", "m", {})
    claimed = store.claim("worker-a", lease_s=0.5)
    assert claimed is not None and claimed.id == job.id and claimed.state == RUNNING
    assert store.claim("worker-b", lease_s=0.5) is None
    store.checkpoint(job.id, "worker-a", 0, b"batch-0", tiles_done=16, tiles_total=48, lease_s=0.5)
    time.sleep(0.8)  # worker-a dies: its lease runs out
    resumed = store.claim("worker-b", lease_s=30)
    assert resumed is not None and resumed.id == job.id and resumed.attempts == 2 and resumed.tiles_done == 16
    with pytest.raises(LeaseLostError):
        store.checkpoint(job.id, "worker-a", 1, b"late", tiles_done=32, tiles_total=48)
    store.checkpoint(job.id, "worker-b", 0, b"batch-0 again", tiles_done=16, tiles_total=48)  # kept once
    store.checkpoint(job.id, "worker-b", 1, b"batch-1", tiles_done=32, tiles_total=48)
    assert store.checkpoints(job.id) == {0: b"batch-0", 1: b"batch-1"}
    store.finish(job.id, "worker-b", {"mitosis_count": 3})
    done = store.get(job.id)
    assert done.state == SUCCEEDED and done.result == {"mitosis_count": 3} and done.lease_owner is None


def test_concurrent_workers_claim_each_job_once(store: JobStore) -> None:
    ids = {store.create(f"case-{i}.svs", "m", {})[0].id for i in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while (job := store.claim(worker, lease_s=60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(claimed) == sorted(ids)


def test_cancel_stops_a_running_job(store: JobStore) -> None:
    job, _ = store.create("case.svs", "m", {})
    store.claim("w", lease_s=60)
    assert store.cancel(job.id).state == CANCELLED
    with pytest.raises(LeaseLostError):
        store.checkpoint(job.id, "w", 0, b"x", 1, 2)
    assert store.cancel(job.id).state == CANCELLED  # cancelling twice is harmless


def test_transient_failures_are_retried_with_backoff_then_reported() -> None:
    from services.gateway.orchestrate import ServiceError
    from services.gateway.worker import GaveUpError, RetryPolicy, with_retries

    now = [0.0]
    waits: list[float] = []
    renewals: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    def retry(step: Callable[[], str], policy: RetryPolicy) -> str:
        return with_retries(step, "batch 0", policy, lambda: renewals.append(now[0]), lambda: now[0], sleep)

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ServiceError("detect: HTTP 503: Triton at 127.0.0.1:1 failed", 503)
        return "done"

    assert retry(flaky, RetryPolicy(budget_s=60, first_delay_s=1, max_delay_s=3)) == "done"
    assert waits == [1, 2, 3] and renewals == [0, 1, 3]  # backoff, capped; the lease renewed before each wait

    def fails_with(status: int) -> Callable[[], str]:
        def step() -> str:
            raise ServiceError(f"detect: HTTP {status}", status)

        return step

    waits.clear()
    with pytest.raises(ServiceError, match="422"):
        retry(fails_with(422), RetryPolicy())  # not transient: no retry
    assert waits == []
    now[0] = 0.0
    with pytest.raises(GaveUpError, match=r"batch 0: still failing after 30 s of retries: detect: HTTP 503"):
        retry(fails_with(503), RetryPolicy(budget_s=40, first_delay_s=2, max_delay_s=16))
    assert waits == [2, 4, 8, 16]


def test_a_busy_service_is_waited_for_as_it_asks_outside_the_outage_budget() -> None:
    from services.gateway.orchestrate import ServiceError
    from services.gateway.worker import GaveUpError, RetryPolicy, with_retries

    now, waits = [0.0], []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    answers = [ServiceError("detect: HTTP 429: busy", 429, retry_after_s=3.0)] * 5 + [None]

    def busy_then_done() -> str:
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return "done"

    policy = RetryPolicy(budget_s=5, busy_budget_s=100)
    assert with_retries(busy_then_done, "detect", policy, clock=lambda: now[0], sleep=sleep) == "done"
    assert waits == [3.0] * 5  # 15 s of waiting, more than the outage budget, as Retry-After asked

    def always_busy() -> str:
        raise ServiceError("detect: HTTP 429: busy", 429, retry_after_s=10.0)

    with pytest.raises(GaveUpError, match="stayed busy for 30 s"):
        with_retries(always_busy, "detect", RetryPolicy(busy_budget_s=35), clock=lambda: now[0], sleep=sleep)


def test_a_stopped_retry_gives_up_at_once() -> None:
    from services.gateway.orchestrate import ServiceError
    from services.gateway.worker import RetryPolicy, StoppedError, with_retries

    stop = threading.Event()
    stop.set()

    def down() -> str:
        raise ServiceError("detect: HTTP 503", 503)

    started = time.monotonic()
    with pytest.raises(StoppedError):
        with_retries(down, "batch 3", RetryPolicy(first_delay_s=30), stop=stop)
    assert time.monotonic() - started < 5


def test_a_failed_job_is_retried_with_its_checkpoints(store: JobStore) -> None:
    job, _ = store.create("case.svs", "m", {})
    store.claim("w", lease_s=60)
    store.checkpoint(job.id, "w", 0, b"first", 8, 16)
    store.fail(job.id, "w", "detect: still failing after 600 s of retries")
    with pytest.raises(JobStateError):
        store.requeue(store.create("other.svs", "m", {})[0].id)  # queued, not failed
    again = store.requeue(job.id)
    assert again.state == "queued" and again.error is None
    resumed = store.claim("w2", lease_s=60)
    assert resumed is not None and resumed.id == job.id and resumed.tiles_done == 8
    assert store.checkpoints(job.id) == {0: b"first"}


def test_eta_follows_this_attempts_rate(store: JobStore) -> None:
    job, _ = store.create("case.svs", "m", {})
    assert store.get(job.id).eta_s is None  # queued
    store.claim("w", lease_s=60)
    assert store.get(job.id).eta_s is None  # nothing done yet
    time.sleep(0.05)
    store.checkpoint(job.id, "w", 0, b"x", 10, 40)
    running = store.get(job.id)
    assert running.claimed_at is not None
    elapsed_s = (running.updated_at - running.claimed_at).total_seconds()
    assert elapsed_s > 0 and running.eta_s == round(30 * elapsed_s / 10, 1)  # 30 tiles left at 10 per elapsed_s
    time.sleep(0.05)
    store.renew(job.id, "w", lease_s=60)  # the lease keeper's heartbeat is not progress
    assert store.get(job.id).eta_s == running.eta_s


def test_a_database_from_before_the_eta_gets_its_columns(store: JobStore) -> None:
    from sqlalchemy import text

    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs DROP COLUMN claimed_at"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN tiles_at_claim"))
    upgraded = JobStore(store.engine)
    job, _ = upgraded.create("case.svs", "m", {})
    claimed = upgraded.claim("w")
    assert claimed is not None and claimed.id == job.id and claimed.claimed_at is not None
