"""Retrying one step of a job: transient failures with backoff, a busy service as long as it asks.

A step is one HTTP call to a service (`orchestrate.StepRunner`). What is transient is decided by
`ServiceError.transient` (the retryable HTTP statuses: 429, 502, 503, 504) and by httpx's
transport errors (the service is not there); everything else is the slide's or the request's
fault and propagates at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from services.gateway.orchestrate import ServiceError

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_RETRY_BUDGET_S = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a job waits out a transient failure (a service, Triton or S3 down) or a busy service.

    Outages: delays double from `first_delay_s` up to `max_delay_s`; after `budget_s` of failing
    the step fails with the last error. Busy (429): waits as long as the service's `Retry-After`
    says, counted against the separate `busy_budget_s`, since a busy cluster is working.
    Checkpointed batches are kept either way."""

    budget_s: float = DEFAULT_RETRY_BUDGET_S
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
