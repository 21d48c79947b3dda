"""Score one slide through the services over HTTP: tiler -> preprocess -> detector -> aggregator.

The same steps as the embedded pipeline (`mitoscope.pipeline.score_slide`), each done by the
service that owns it, with protobuf bodies between them. Batches are sent one at a time here;
bounded concurrency and durable checkpoints belong to the jobs layer built on top of this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from services.common.messages import PROTOBUF_CONTENT_TYPE, stats_to_message
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.preprocess.reinhard import LabStats
from services.tiler.reader import DEFAULT_BATCH_SIZE

STATS_SAMPLE_TILES = 32  # as the embedded pipeline
DEFAULT_TIMEOUT_S = 300.0


class ServiceError(RuntimeError):
    """A service answered with an error; the message carries its status and JSON error."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth retrying: the service or one behind it is unavailable or timed out."""
        return self.status in (502, 503, 504)


@dataclass(frozen=True)
class ServiceUrls:
    tiler: str
    preprocess: str
    detector: str
    aggregator: str


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 400:
        try:
            detail = response.json().get("message", response.text)
        except ValueError:
            detail = response.text
        raise ServiceError(f"{what}: HTTP {response.status_code}: {detail}", response.status_code)
    return response


def _post_message(client: httpx.Client, url: str, message: Any, what: str) -> bytes:
    response = client.post(url, content=message.SerializeToString(), headers={"content-type": PROTOBUF_CONTENT_TYPE})
    return _check(response, what).content


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
        field_diameter_mm: float = 0.0,
    ) -> None:
        self.client, self.urls, self.model, self.batch_size = client, urls, model, batch_size
        described = _check(client.get(f"{urls.detector}/v1/models/{model}"), "detector model").json()
        self.slide = {
            "location": location,
            "mpp_um_per_px": mpp_um_per_px,
            "model_mpp_um_per_px": described["mpp_um_per_px"],
            "tile_px": described["input_size_px"],
        }
        self.plan = pb.Plan.FromString(
            _check(client.post(f"{urls.tiler}/v1/plan", json=self.slide), "tiler plan").content
        )
        self.total_tiles = len(self.plan.tiles)
        self.batch_count = (self.total_tiles + batch_size - 1) // batch_size
        step = max(1, self.total_tiles // STATS_SAMPLE_TILES)
        sample = list(range(self.total_tiles))[::step][:STATS_SAMPLE_TILES]
        sample_batch = _check(
            client.post(f"{urls.tiler}/v1/batch", json={**self.slide, "indices": sample}), "tiler sample"
        ).content
        self.source = pb.LabStats.FromString(
            _post_message(client, f"{urls.preprocess}/v1/stats", pb.TileBatch.FromString(sample_batch), "stats")
        )
        self.target = stats_to_message(LabStats.from_dict(described["reinhard_target_lab"]))
        self.aggregate_request = pb.AggregateRequest(
            slide_name=location.rsplit("/", 1)[-1],
            plan=self.plan,
            class_names=described["class_names"],
            field_diameter_mm=field_diameter_mm,
        )

    def tiles_through(self, batch_index: int) -> int:
        return min((batch_index + 1) * self.batch_size, self.total_tiles)

    def detect_batch(self, batch_index: int) -> pb.Detections:
        start = batch_index * self.batch_size
        raw = _check(
            self.client.post(
                f"{self.urls.tiler}/v1/batch", json={**self.slide, "start": start, "count": self.batch_size}
            ),
            "tiler batch",
        ).content
        normalised = _post_message(
            self.client,
            f"{self.urls.preprocess}/v1/normalise",
            pb.NormaliseRequest(batch=pb.TileBatch.FromString(raw), source=self.source, target=self.target),
            "normalise",
        )
        detections = _post_message(
            self.client,
            f"{self.urls.detector}/v1/detect",
            pb.DetectRequest(batch=pb.TileBatch.FromString(normalised), model=self.model),
            "detect",
        )
        return pb.Detections.FromString(detections)

    def aggregate(self, detections: list[pb.Detections]) -> dict[str, Any]:
        request = pb.AggregateRequest()
        request.CopyFrom(self.aggregate_request)
        request.detections.extend(detections)
        response = self.client.post(
            f"{self.urls.aggregator}/v1/aggregate",
            content=request.SerializeToString(),
            headers={"content-type": PROTOBUF_CONTENT_TYPE},
        )
        result: dict[str, Any] = _check(response, "aggregate").json()
        return result


def score_via_services(
    location: str,
    urls: ServiceUrls,
    model: str,
    mpp_um_per_px: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    field_diameter_mm: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    with httpx.Client(timeout=timeout_s) as client:
        session = SlideSession(client, urls, location, model, mpp_um_per_px, batch_size, field_diameter_mm)
        if progress:
            progress(0, session.total_tiles)
        detections = []
        for batch_index in range(session.batch_count):
            detections.append(session.detect_batch(batch_index))
            if progress:
                progress(session.tiles_through(batch_index), session.total_tiles)
        return session.aggregate(detections)
