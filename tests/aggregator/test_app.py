"""The aggregator service over HTTP: the same result as the in-process aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from fastapi.testclient import TestClient

from services.aggregator.app import Settings, create_app
from services.aggregator.merge import merge_tile_detections
from services.aggregator.result import summarise
from services.aggregator.schema import SlideResult
from services.common.messages import detections_to_message, plan_to_message, stats_to_message
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.wire import PROTOBUF_CONTENT_TYPE
from services.detector.postprocess import TileDetections
from services.preprocess.reinhard import LabStats
from services.tiler.grid import plan_tiles
from services.tiler.tissue import TissueMask

HEADERS = {"content-type": PROTOBUF_CONTENT_TYPE}


def _case() -> tuple[pb.AggregateRequest, dict[int, TileDetections], object, TissueMask]:
    mask = np.zeros((64, 64), bool)
    mask[8:56, 4:60] = True
    tissue = TissueMask(mask, 64.0, 0.25)
    plan = plan_tiles(4096, 4096, 0.25, tissue)
    rng = np.random.default_rng(3)
    per_tile: dict[int, TileDetections] = {}
    for tile in plan.tiles:
        n = int(rng.integers(0, 3))
        centres = rng.uniform(30, 480, (n, 2)).astype(np.float32)
        boxes = np.concatenate([centres - 25, centres + 25], axis=1)
        per_tile[tile.index] = TileDetections(boxes, rng.uniform(0.3, 1.0, n).astype(np.float32), np.zeros(n, np.int64))
    qc = {"verdict": "ok", "checks": {}, "thresholds": {}, "excluded": [], "excluded_area_mm2": 0.0}
    request = pb.AggregateRequest(
        slide_name="case.svs",
        plan=plan_to_message(plan, tissue, qc, "aperio", "openslide", "metadata"),
        class_names=["mitosis"],
        model=pb.ModelProvenance(
            name="m", version="1", sha256="ab", backend="triton", input_size_px=512, mpp_um_per_px=0.25
        ),
        source_lab=stats_to_message(LabStats.from_dict({"mean": [60, 10, -5], "std": [12, 5, 4]})),
        target_lab=stats_to_message(LabStats.from_dict({"mean": [65, 12, -8], "std": [14, 6, 5]})),
        batch_size=150,
    )
    request.detections.append(
        detections_to_message("case.svs", "m", plan.tiles, [per_tile[t.index] for t in plan.tiles])
    )
    return request, per_tile, plan, tissue


def test_aggregate_over_http_equals_in_process() -> None:
    request, per_tile, plan, tissue = _case()
    with TestClient(create_app()) as client:
        response = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        result = SlideResult.model_validate_json(response.content).document()
        merged = merge_tile_detections(plan, per_tile, ("mitosis",))  # type: ignore[arg-type]
        summary = summarise(merged, 4096, 4096, 0.25, tissue)
        assert result["mitosis_count"] == summary.mitosis_count == len(merged)
        assert result["hotspot"]["count"] == summary.hotspot.count
        assert result["mitotic_score"] == summary.mitotic_score
        geojson = client.post("/v1/aggregate.geojson", content=request.SerializeToString(), headers=HEADERS)
        assert geojson.headers["content-type"] == "application/geo+json"
        assert len(geojson.json()["features"]) == len(merged) + 1  # the hotspot annotation too


def test_aggregate_refuses_inconsistent_input() -> None:
    request, _, _, _ = _case()
    request.detections[0].tiles.add(tile_index=99_999)
    with TestClient(create_app()) as client:
        stray = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
        assert stray.status_code == 400 and "not in the plan" in stray.json()["message"]
        request, _, _, _ = _case()
        request.field_diameter_mm = 0.52
        bad = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
        assert bad.status_code == 422 and bad.json()["error"] == "bad_grading_parameter"


def test_exports_are_written_to_the_output_location(tmp_path: Path) -> None:
    request, _, _, _ = _case()
    request.output_location = "jobs/42"
    with TestClient(create_app(Settings(output_root=tmp_path))) as client:
        response = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
        assert response.status_code == 200, response.text
        result = response.json()
        folder = tmp_path / "jobs" / "42"
        assert result["exports"] == {
            name: str(folder / name) for name in ("result.geojson", "result.csv", "result.json")
        }
        written = json.loads((folder / "result.json").read_text())
        assert written["mitosis_count"] == result["mitosis_count"] and "exports" not in written
        assert len((folder / "result.csv").read_text().strip().splitlines()) == 1 + result["mitosis_count"]
        slide_picture = cv2.imencode(".png", np.full((256, 256, 3), 230, np.uint8))[1].tobytes()
        request.output_location, request.slide_png = "jobs/43", slide_picture
        pictured = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
        exports = pictured.json()["exports"]
        overview = cv2.imread(exports["overview.png"])
        assert overview.shape[1] == 256 and (overview != 230).any()  # the slide's picture, drawn on
        request.slide_png = b"not a png"
        broken = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
        assert broken.status_code == 422 and "not a PNG" in broken.json()["message"]
        request.slide_png = b""
        request.output_location = "../../elsewhere"
        outside = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
        assert outside.status_code == 422 and outside.json()["error"] == "bad_output_location"
        assert not (tmp_path.parent.parent / "elsewhere").exists()


def test_the_answer_is_the_typed_result_with_every_provenance_field() -> None:
    from services.aggregator.app import aggregate

    request, _, _, _ = _case()
    request.mpp_override_um_per_px = 0.25
    request.elapsed_s = 12.5  # the caller's clock: exported result.json files carry the timing too
    with TestClient(create_app()) as client:
        answered = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS).json()
    assert answered == aggregate(request).document()
    provenance = answered["provenance"]
    assert provenance["model"]["name"] == "m" and provenance["normalisation"]["method"] == "reinhard"
    assert provenance["timing"] == {
        "seconds": 12.5,
        "tiles_per_s": round(answered["provenance"]["tiles"]["total"] / 12.5, 2),
    }
    assert provenance["parameters"]["mpp_override_um_per_px"] == 0.25 and provenance["parameters"]["batch_size"] == 150
    assert provenance["code_version"] and answered["slide"]["vendor"] == "aperio" and answered["qc"]["verdict"] == "ok"
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "SlideResult" in schema and "qc" in schema["SlideResult"]["properties"]


def test_a_request_without_provenance_is_refused() -> None:
    request, _, _, _ = _case()
    request.ClearField("model")
    with TestClient(create_app()) as client:
        refused = client.post("/v1/aggregate", content=request.SerializeToString(), headers=HEADERS)
    assert refused.status_code == 400 and "model" in refused.json()["message"]
