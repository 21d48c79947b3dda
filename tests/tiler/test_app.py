"""The tiler service over HTTP: plans and batches equal the in-process ones; errors are precise."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from mitoscope.pipeline import ScoreOptions, prepare_slide
from services.common.messages import batch_from_message, plan_from_message
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.tiler.app import Settings, create_app
from services.tiler.reader import read_batches


@pytest.fixture(scope="module")
def slide_root(small_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slides")
    shutil.copy(small_slide, root / "small.svs")
    (root / "notes.svs").write_text("not a slide")
    return root


@pytest.fixture(scope="module")
def client(slide_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    settings = Settings(slide_root=slide_root, cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings)) as client:
        yield client


def test_plan_and_batches_match_the_in_process_tiler(client: TestClient, slide_root: Path) -> None:
    response = client.post("/v1/plan", json={"location": "small.svs"})
    assert response.status_code == 200, response.text
    plan, tissue = plan_from_message(pb.Plan.FromString(response.content))
    prepared = prepare_slide(slide_root / "small.svs", ScoreOptions(), 0.25, 512)
    with prepared.slide as slide:
        assert plan == prepared.plan
        np.testing.assert_array_equal(tissue.mask, prepared.tissue.mask)
        expected = next(read_batches(slide, prepared.plan, batch_size=3))
    response = client.post("/v1/batch", json={"location": "small.svs", "start": 0, "count": 3})
    assert response.status_code == 200
    tiles, pixels = batch_from_message(pb.TileBatch.FromString(response.content))
    assert tiles == expected.tiles
    np.testing.assert_array_equal(pixels, expected.pixels)


def test_slide_errors_are_precise(client: TestClient) -> None:
    missing = client.post("/v1/plan", json={"location": "nope.svs"})
    assert missing.status_code == 404 and missing.json()["error"] == "slide_not_found"
    escape = client.post("/v1/plan", json={"location": "../../etc/passwd"})
    assert escape.status_code == 404 and "outside the slide root" in escape.json()["message"]
    bad = client.post("/v1/plan", json={"location": "notes.svs"})
    assert bad.status_code == 422 and "not a whole-slide image" in bad.json()["message"]
    too_many = client.post("/v1/batch", json={"location": "small.svs", "start": 0, "count": 10_000})
    assert too_many.status_code == 422
    no_slide = client.post("/v1/batch", json={"location": "gone.svs", "start": 0, "count": 4})
    assert no_slide.status_code == 404 and "gone.svs" in no_slide.json()["message"]
    outside = client.post("/v1/batch", json={"location": "small.svs", "indices": [0, 99_999]})
    assert outside.status_code == 422 and outside.json()["error"] == "tile_out_of_range"  # the request, not the slide
    assert "tile indices outside" in outside.json()["message"]


def test_deepzoom_tiles_for_viewers(client: TestClient) -> None:
    top = client.get("/v1/deepzoom/11/0_0.jpeg", params={"location": "small.svs"})
    assert top.status_code == 200 and top.headers["content-type"] == "image/jpeg"
    tile = cv2.imdecode(np.frombuffer(top.content, np.uint8), cv2.IMREAD_COLOR)
    assert tile.shape[0] <= 256 and tile.shape[2] == 3
    beyond = client.get("/v1/deepzoom/11/99_99.jpeg", params={"location": "small.svs"})
    assert beyond.status_code == 404 and beyond.json()["error"] == "no_such_tile"


def test_readiness_needs_the_slide_root(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(slide_root=tmp_path / "absent", cache_dir=tmp_path))) as client:
        assert client.get("/health/ready").status_code == 503


def test_unknown_deepzoom_level_names_the_range(client: TestClient) -> None:
    response = client.get("/v1/deepzoom/40/0_0.jpeg", params={"location": "small.svs"})
    assert response.status_code == 404 and "0..11" in response.json()["message"]
    assert response.json()["error"] == "no_such_tile"  # the slide exists: not slide_not_found
