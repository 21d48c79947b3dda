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
        raise ServiceError(f"{what}: HTTP {response.status_code}: {detail}")
    return response


def _post_message(client: httpx.Client, url: str, message: Any, what: str) -> bytes:
    response = client.post(url, content=message.SerializeToString(), headers={"content-type": PROTOBUF_CONTENT_TYPE})
    return _check(response, what).content


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
        described = _check(client.get(f"{urls.detector}/v1/models/{model}"), "detector model").json()
        slide = {
            "location": location,
            "mpp_um_per_px": mpp_um_per_px,
            "model_mpp_um_per_px": described["mpp_um_per_px"],
            "tile_px": described["input_size_px"],
        }
        plan = pb.Plan.FromString(_check(client.post(f"{urls.tiler}/v1/plan", json=slide), "tiler plan").content)
        total = len(plan.tiles)
        step = max(1, total // STATS_SAMPLE_TILES)
        sample = list(range(total))[::step][:STATS_SAMPLE_TILES]
        sample_batch = _check(
            client.post(f"{urls.tiler}/v1/batch", json={**slide, "indices": sample}), "tiler sample"
        ).content
        source = pb.LabStats.FromString(
            _post_message(client, f"{urls.preprocess}/v1/stats", pb.TileBatch.FromString(sample_batch), "stats")
        )
        target = stats_to_message(LabStats.from_dict(described["reinhard_target_lab"]))
        request = pb.AggregateRequest(
            slide_name=location.rsplit("/", 1)[-1],
            plan=plan,
            class_names=described["class_names"],
            field_diameter_mm=field_diameter_mm,
        )
        if progress:
            progress(0, total)
        for start in range(0, total, batch_size):
            raw = _check(
                client.post(f"{urls.tiler}/v1/batch", json={**slide, "start": start, "count": batch_size}),
                "tiler batch",
            ).content
            normalised = _post_message(
                client,
                f"{urls.preprocess}/v1/normalise",
                pb.NormaliseRequest(batch=pb.TileBatch.FromString(raw), source=source, target=target),
                "normalise",
            )
            detections = _post_message(
                client,
                f"{urls.detector}/v1/detect",
                pb.DetectRequest(batch=pb.TileBatch.FromString(normalised), model=model),
                "detect",
            )
            request.detections.append(pb.Detections.FromString(detections))
            if progress:
                progress(min(start + batch_size, total), total)
        result: dict[str, Any] = _check(
            client.post(
                f"{urls.aggregator}/v1/aggregate",
                content=request.SerializeToString(),
                headers={"content-type": PROTOBUF_CONTENT_TYPE},
            ),
            "aggregate",
        ).json()
        return result
