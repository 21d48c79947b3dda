"""Score one slide through the services over HTTP: tiler -> preprocess -> detector -> aggregator.

The same steps as the embedded pipeline (`mitoscope.pipeline.score_slide`), each done by the
service that owns it, with protobuf bodies between them. At most `max_in_flight` batches are on
their way at once, and the next is sent only when a finished one has been taken: memory stays
bounded however large the slide. Every HTTP call goes through a `StepRunner`, so the jobs layer
retries the one call that failed (not the whole batch); durable checkpoints belong there too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import ValidationError

from services.aggregator.schema import SlideResult
from services.common.errors import RETRYABLE_HTTP_STATUSES
from services.common.messages import model_message, stats_to_message
from services.common.options import DEFAULT_BATCH_SIZE, DEFAULT_FIELD_DIAMETER_MM
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.wire import PROTOBUF_CONTENT_TYPE
from services.preprocess.reinhard import LabStats, stats_sample_indices

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_BATCHES_IN_FLIGHT = 2  # one batch read and normalised while the previous one is detected


T = TypeVar("T")


class StepRunner(Protocol):
    """Runs one HTTP step (`what` names it in errors): once, or with retries."""

    def __call__(self, step: Callable[[], T], what: str) -> T: ...


def run_once(step: Callable[[], T], what: str) -> T:
    return step()


class ServiceError(RuntimeError):
    """A service answered with an error; the message carries its status and JSON error."""

    def __init__(
        self, message: str, status: int = 0, retry_after_s: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.code = code  # the service's machine-readable error code, e.g. "not_brightfield"

    @property
    def transient(self) -> bool:
        """Worth retrying: the service is busy (429), or it or one behind it is down or timed out."""
        return self.status in RETRYABLE_HTTP_STATUSES


@dataclass(frozen=True)
class ServiceUrls:
    tiler: str
    preprocess: str
    detector: str
    aggregator: str


def check_response(response: httpx.Response, what: str) -> httpx.Response:
    """`response`, unless it is an error: then a ServiceError with its status, code and Retry-After."""
    if response.status_code >= 400:
        code: str | None = None
        try:
            body = response.json()
            detail, code = body.get("message", response.text), body.get("error")
        except (ValueError, AttributeError):
            detail = response.text
        try:
            retry_after_s: float | None = float(response.headers.get("retry-after", ""))
        except ValueError:
            retry_after_s = None
        raise ServiceError(f"{what}: HTTP {response.status_code}: {detail}", response.status_code, retry_after_s, code)
    return response


def _post_message(client: httpx.Client, url: str, message: Any) -> httpx.Response:
    return client.post(url, content=message.SerializeToString(), headers={"content-type": PROTOBUF_CONTENT_TYPE})


class SlideSession:
    """One slide's scoring through the services, step by step (so a job can checkpoint batches)."""

    def __init__(
        self,
        client: httpx.Client,
        urls: ServiceUrls,
        location: str,
        model: str,
        mpp_um_per_px: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        field_diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM,
        output_location: str = "",
        run: StepRunner = run_once,
    ) -> None:
        self.client, self.urls, self.model, self.batch_size, self.run = client, urls, model, batch_size, run
        described = self._call(lambda: client.get(f"{urls.detector}/v1/models/{model}"), "detector model").json()
        self.slide = {
            "location": location,
            "mpp_um_per_px": mpp_um_per_px,
            "model_mpp_um_per_px": described["mpp_um_per_px"],
            "tile_px": described["input_size_px"],
        }
        self.plan = pb.Plan.FromString(
            self._call(lambda: client.post(f"{urls.tiler}/v1/plan", json=self.slide), "tiler plan").content
        )
        self.total_tiles = len(self.plan.tiles)
        self.batch_count = (self.total_tiles + batch_size - 1) // batch_size
        sample = stats_sample_indices(self.total_tiles)  # the tiles the embedded pipeline samples
        sample_batch = self._call(
            lambda: client.post(f"{urls.tiler}/v1/batch", json={**self.slide, "indices": sample}), "tiler sample"
        ).content
        stats_request = pb.TileBatch.FromString(sample_batch)
        self.source = pb.LabStats.FromString(
            self._call(lambda: _post_message(client, f"{urls.preprocess}/v1/stats", stats_request), "stats").content
        )
        self.target = stats_to_message(LabStats.from_dict(described["reinhard_target_lab"]))
        self.aggregate_request = pb.AggregateRequest(
            slide_name=location.rsplit("/", 1)[-1],
            plan=self.plan,
            class_names=described["class_names"],
            field_diameter_mm=field_diameter_mm,
            output_location=output_location,
            model=model_message(described, described["score_threshold"]),
            source_lab=self.source,
            target_lab=self.target,
            batch_size=batch_size,
        )
        if mpp_um_per_px is not None:
            self.aggregate_request.mpp_override_um_per_px = mpp_um_per_px
        if output_location:  # the exports written for the caller include the overview picture
            self.aggregate_request.slide_png = self._call(
                lambda: client.get(f"{urls.tiler}/v1/overview.png", params={"location": location}), "tiler overview"
            ).content

    def _call(self, request: Callable[[], httpx.Response], what: str) -> httpx.Response:
        return self.run(lambda: check_response(request(), what), what)

    def tiles_in(self, batch_index: int) -> int:
        return min(self.batch_size, self.total_tiles - batch_index * self.batch_size)

    def detect_batch(self, batch_index: int) -> pb.Detections:
        start, client, urls = batch_index * self.batch_size, self.client, self.urls
        batch = {**self.slide, "start": start, "count": self.batch_size}
        raw = self._call(lambda: client.post(f"{urls.tiler}/v1/batch", json=batch), f"tiler batch {batch_index}")
        normalise = pb.NormaliseRequest(
            batch=pb.TileBatch.FromString(raw.content), source=self.source, target=self.target
        )
        normalised = self._call(
            lambda: _post_message(client, f"{urls.preprocess}/v1/normalise", normalise),
            f"normalise batch {batch_index}",
        )
        detect = pb.DetectRequest(batch=pb.TileBatch.FromString(normalised.content), model=self.model)
        found = self._call(
            lambda: _post_message(client, f"{urls.detector}/v1/detect", detect), f"detect batch {batch_index}"
        )
        return pb.Detections.FromString(found.content)

    def aggregate(self, detections: list[pb.Detections], started_s: float | None = None) -> dict[str, Any]:
        """The slide result document as the aggregator built (and exported) it; with `started_s`
        (`time.perf_counter()` at the start of the run) it carries the run's timing."""
        request = pb.AggregateRequest()
        request.CopyFrom(self.aggregate_request)
        request.detections.extend(detections)
        if started_s is not None:
            request.elapsed_s = time.perf_counter() - started_s
        response = self._call(
            lambda: _post_message(self.client, f"{self.urls.aggregator}/v1/aggregate", request), "aggregate"
        )
        try:
            return SlideResult.model_validate_json(response.content).document()
        except ValidationError as e:
            raise ServiceError(f"aggregate: the aggregator answered a result that is not a SlideResult: {e}") from e


def detect_in_flight(
    detect: Callable[[int], pb.Detections],
    batch_indices: Iterable[int],
    max_in_flight: int,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, pb.Detections]]:
    """(batch index, detections) as batches finish, with at most `max_in_flight` outstanding.

    A new batch is sent only when the caller takes a finished one (backpressure). When the caller
    stops early or a batch fails, nothing more is sent, `stop` is set (so batches waiting to retry
    give up at once) and the batches in flight are awaited."""
    pending = iter(batch_indices)
    finished_all = False
    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="batch") as pool:
        in_flight: dict[Future[pb.Detections], int] = {}
        try:
            for batch_index in pending:
                in_flight[pool.submit(detect, batch_index)] = batch_index
                if len(in_flight) == max_in_flight:
                    break
            while in_flight:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    batch_index = in_flight.pop(future)
                    yield batch_index, future.result()
                    following = next(pending, None)
                    if following is not None:
                        in_flight[pool.submit(detect, following)] = following
            finished_all = True
        finally:
            if not finished_all and stop is not None:
                stop.set()
            for future in in_flight:
                future.cancel()


def score_via_services(
    location: str,
    urls: ServiceUrls,
    model: str,
    mpp_um_per_px: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    field_diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_in_flight: int = DEFAULT_BATCHES_IN_FLIGHT,
) -> dict[str, Any]:
    started_s = time.perf_counter()
    with httpx.Client(timeout=timeout_s) as client:
        session = SlideSession(client, urls, location, model, mpp_um_per_px, batch_size, field_diameter_mm)
        if progress:
            progress(0, session.total_tiles)
        detections: dict[int, pb.Detections] = {}
        tiles_done = 0
        for batch_index, found in detect_in_flight(session.detect_batch, range(session.batch_count), max_in_flight):
            detections[batch_index] = found
            tiles_done += session.tiles_in(batch_index)
            if progress:
                progress(tiles_done, session.total_tiles)
        return session.aggregate([detections[i] for i in range(session.batch_count)], started_s)
