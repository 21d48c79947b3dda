"""The preprocess service over HTTP: protobuf in and out, JSON errors, health and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mitoscope.synth import SynthParams, synthesize
from services.common.messages import (
    batch_from_message,
    batch_to_message,
    stats_from_message,
    stats_to_message,
)
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.wire import PROTOBUF_CONTENT_TYPE
from services.preprocess.app import Settings, create_app
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images
from services.tiler.grid import Tile

TARGET = LabStats((60.0, 32.0, -17.0), (15.0, 8.5, 8.0))
HEADERS = {"content-type": PROTOBUF_CONTENT_TYPE}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings(max_body_bytes=8 * 1024 * 1024)))


@pytest.fixture(scope="module")
def batch() -> pb.TileBatch:
    rgb = synthesize(SynthParams(1024, 512, seed=12, tissue_fraction=0.9)).rgb
    pixels = np.stack([rgb[:, :512], rgb[:, 512:]])
    return batch_to_message("slide-7", (Tile(0, 0, 0, 0, 0), Tile(1, 0, 1, 416, 0)), pixels)


def test_stats_and_normalisation_match_the_in_process_functions(client: TestClient, batch: pb.TileBatch) -> None:
    _, pixels = batch_from_message(batch)
    response = client.post("/v1/stats", content=batch.SerializeToString(), headers=HEADERS)
    assert response.status_code == 200 and response.headers["content-type"] == PROTOBUF_CONTENT_TYPE
    source = stats_from_message(pb.LabStats.FromString(response.content))
    assert source == stats_from_images(list(pixels))
    request = pb.NormaliseRequest(batch=batch, source=stats_to_message(source), target=stats_to_message(TARGET))
    response = client.post("/v1/normalise", content=request.SerializeToString(), headers=HEADERS)
    assert response.status_code == 200
    tiles, normalised = batch_from_message(pb.TileBatch.FromString(response.content))
    assert [t.index for t in tiles] == [0, 1]
    np.testing.assert_array_equal(normalised, ReinhardNormaliser(source, TARGET)(pixels))


def test_bad_requests_get_precise_json_errors(client: TestClient, batch: pb.TileBatch) -> None:
    wrong_type = client.post("/v1/stats", content=batch.SerializeToString(), headers={"content-type": "image/png"})
    assert wrong_type.status_code == 415 and wrong_type.json()["error"] == "unsupported_media_type"
    garbage = client.post("/v1/stats", content=b"\xff\xfe not protobuf", headers=HEADERS)
    assert garbage.status_code == 400 and "mitoscope.v1.TileBatch" in garbage.json()["message"]
    short = pb.TileBatch(slide_id="s", tile_px=512, tiles=[pb.Tile(index=0)], pixels=b"\x00" * 100)
    inconsistent = client.post("/v1/stats", content=short.SerializeToString(), headers=HEADERS)
    assert inconsistent.status_code == 400 and "pixel bytes" in inconsistent.json()["message"]
    glass = batch_to_message("s", (Tile(0, 0, 0, 0, 0),), np.full((1, 64, 64, 3), 245, np.uint8))
    blank = client.post("/v1/stats", content=glass.SerializeToString(), headers=HEADERS)
    assert blank.status_code == 422 and blank.json()["error"] == "cannot_normalise"
    huge = client.post("/v1/stats", content=b"\x00" * (9 * 1024 * 1024), headers=HEADERS)
    assert huge.status_code == 413


def test_health_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    assert client.get("/health/ready").json() == {"status": "ready"}
    metrics = client.get("/metrics").text
    assert 'mitoscope_http_requests_total{route="/v1/stats",service="preprocess",status="200"}' in metrics
    assert "/v1/normalise" in client.get("/openapi.json").json()["paths"]
