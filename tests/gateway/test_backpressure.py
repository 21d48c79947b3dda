"""Bounded work in flight: a job sends at most N batches at once, a busy service answers 429."""

from __future__ import annotations

import asyncio
import threading
import time

from fastapi.testclient import TestClient

from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.web import service_app
from services.gateway.orchestrate import detect_in_flight


def test_at_most_n_batches_are_in_flight_and_none_is_sent_ahead_of_the_caller() -> None:
    lock = threading.Lock()
    active, peak, started = [0], [0], []

    def detect(batch_index: int) -> pb.Detections:
        with lock:
            started.append(batch_index)
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02 * (batch_index % 3))  # batches finish out of order
        with lock:
            active[0] -= 1
        return pb.Detections(model=str(batch_index))

    seen = {i: found.model for i, found in detect_in_flight(detect, range(12), max_in_flight=3)}
    assert seen == {i: str(i) for i in range(12)} and 2 <= peak[0] <= 3  # concurrent, and bounded

    started.clear()
    for _ in detect_in_flight(detect, range(12), max_in_flight=2):
        break  # the caller stops taking results: nothing more is sent
    assert len(started) == 2


def test_a_service_at_its_limit_answers_429_with_retry_after() -> None:
    app = service_app("test", "a service with one slot", ready=lambda: [], errors={}, max_concurrent_requests=1)
    entered, release = threading.Event(), asyncio.Event()

    @app.get("/v1/slow")
    async def slow() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {"done": "yes"}

    @app.get("/release")
    async def set_release() -> dict[str, str]:
        release.set()
        return {}

    with TestClient(app) as client:
        first: list[int] = []
        holder = threading.Thread(target=lambda: first.append(client.get("/v1/slow").status_code))
        holder.start()
        assert entered.wait(10)
        busy = client.get("/v1/slow")
        assert busy.status_code == 429 and busy.json()["error"] == "busy" and busy.headers["retry-after"] == "1"
        assert client.get("/health/ready").status_code == 200  # health is never refused
        client.get("/release")
        holder.join(10)
        assert first == [200]
        assert client.get("/v1/slow").status_code == 200  # the slot is free again


def test_a_failed_batch_stops_the_others_waiting_to_retry() -> None:
    stop = threading.Event()

    def detect(batch_index: int) -> pb.Detections:
        if batch_index == 1:
            raise ValueError("detect batch 1: HTTP 422")
        stop.wait(10)  # a sibling backing off: it must be released, not waited for
        return pb.Detections()

    started = time.monotonic()
    try:
        for _ in detect_in_flight(detect, range(4), max_in_flight=2, stop=stop):
            pass
    except ValueError as e:
        assert "batch 1" in str(e)
    else:
        raise AssertionError("the failure was swallowed")
    assert stop.is_set() and time.monotonic() - started < 5

    finished = threading.Event()
    list(detect_in_flight(lambda i: pb.Detections(), range(3), max_in_flight=2, stop=finished))
    assert not finished.is_set()  # a run that went through does not stop anyone
