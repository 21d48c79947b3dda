"""End to end: a synthetic slide with planted mitoses, scored in one process and through Triton."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, match_points
from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.slide_files import make_slide, truth_path_for
from mitoscope.synth import SynthParams
from services.aggregator.exports import CSV_COLUMNS
from services.detector.backends import OnnxRuntimeBackend, TritonBackend
from services.detector.detector import ModelDetector
from services.detector.model import DEFAULT_MODEL_NAME
from services.detector.triton_server import TritonServer, free_port
from tests.conftest import MODEL_PATH, run_cli

# Stated tolerances for the shipped model on the unseen end-to-end slide (see README).
MIN_RECALL = 0.8
MIN_PRECISION = 0.8
MAX_COUNT_ERROR_FRACTION = 0.2

GEOJSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "geometry", "properties"],
                "properties": {
                    "type": {"const": "Feature"},
                    "geometry": {
                        "type": "object",
                        "required": ["type", "coordinates"],
                        "properties": {
                            "type": {"const": "Polygon"},
                            "coordinates": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "array",
                                    "minItems": 4,
                                    "items": {
                                        "type": "array",
                                        "minItems": 2,
                                        "maxItems": 2,
                                        "items": {"type": "number"},
                                    },
                                },
                            },
                        },
                    },
                    "properties": {
                        "type": "object",
                        "required": ["objectType", "classification"],
                        "properties": {
                            "objectType": {"enum": ["detection", "annotation"]},
                            "classification": {"type": "object", "required": ["name"]},
                            "measurements": {"type": "object", "additionalProperties": {"type": "number"}},
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def onnx_result(e2e_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("onnx") / "result"
    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH))
    try:
        result = score_slide(e2e_slide, out, detector, ScoreOptions(batch_size=16))
    finally:
        detector.close()
    return result, out


def _truth(slide: Path) -> dict[str, Any]:
    return json.loads(truth_path_for(slide).read_text())


@pytest.mark.slow
def test_count_is_close_to_the_planted_truth(onnx_result: tuple[dict[str, Any], Path], e2e_slide: Path) -> None:
    result, _ = onnx_result
    truth = _truth(e2e_slide)
    counts = match_points(
        ((d["x_px"], d["y_px"], d["score"]) for d in result["detections"]),
        ((m["x_px"], m["y_px"]) for m in truth["mitoses"]),
        MIDOG_MATCH_RADIUS_UM / truth["mpp_um_per_px"],
    )
    assert truth["mitosis_count"] >= 10
    assert counts.recall >= MIN_RECALL, counts
    assert counts.precision >= MIN_PRECISION, counts
    assert abs(result["mitosis_count"] - truth["mitosis_count"]) <= MAX_COUNT_ERROR_FRACTION * truth["mitosis_count"]


@pytest.mark.slow
def test_result_carries_score_hotspot_and_provenance(onnx_result: tuple[dict[str, Any], Path]) -> None:
    result, _ = onnx_result
    assert result["mitotic_score"] in (1, 2, 3)
    assert result["hotspot"]["count"] <= result["mitosis_count"]
    assert result["density_per_mm2"] == pytest.approx(result["mitosis_count"] / result["tissue_area_mm2"], rel=1e-2)
    model = result["provenance"]["model"]
    assert model["name"] == DEFAULT_MODEL_NAME and len(model["sha256"]) == 64
    assert result["provenance"]["normalisation"]["method"] == "reinhard"
    assert result["provenance"]["parameters"]["field_diameter_mm"] == 0.55
    assert result["provenance"]["code_version"]


@pytest.mark.slow
def test_exports_validate(onnx_result: tuple[dict[str, Any], Path]) -> None:
    result, out = onnx_result
    assert sorted(p.name for p in out.iterdir()) == ["overview.png", "result.csv", "result.geojson", "result.json"]
    geojson = json.loads((out / "result.geojson").read_text())
    jsonschema.validate(geojson, GEOJSON_SCHEMA)
    detections = [f for f in geojson["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == result["mitosis_count"]
    assert all(f["properties"]["classification"]["name"] == "Mitosis" for f in detections)
    with (out / "result.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows, "the end-to-end slide has planted mitoses: an empty CSV is a failure"
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == result["mitosis_count"]
    assert sum(int(r["in_hotspot"]) for r in rows) == result["hotspot"]["count"]
    overview = cv2.imread(str(out / "overview.png"))
    assert overview is not None and overview.shape[0] > 256
    assert json.loads((out / "result.json").read_text()) == json.loads(json.dumps(result))


@pytest.mark.integration
def test_triton_backend_gives_the_same_result(
    onnx_result: tuple[dict[str, Any], Path], e2e_slide: Path, triton_server: TritonServer, tmp_path: Path
) -> None:
    detector = ModelDetector(TritonBackend(triton_server.grpc_url, DEFAULT_MODEL_NAME))
    try:
        assert detector.info.sha256 == onnx_result[0]["provenance"]["model"]["sha256"]
        result = score_slide(e2e_slide, tmp_path / "triton", detector, ScoreOptions(batch_size=16))
    finally:
        detector.close()
    reference = onnx_result[0]
    assert result["mitosis_count"] == reference["mitosis_count"]
    for ours, theirs in zip(result["detections"], reference["detections"], strict=True):
        assert (ours["x_px"], ours["y_px"]) == pytest.approx((theirs["x_px"], theirs["y_px"]), abs=0.5)
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-3)


def _assert_refused(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("error:") and len(message.splitlines()) == 1, message
    for needle in needles:
        assert needle in message


@pytest.mark.slow
def test_cli_refuses_bad_input_without_leaving_outputs(tmp_path: Path, small_slide: Path) -> None:
    not_a_slide = tmp_path / "notes.svs"
    not_a_slide.write_text("not a slide\n")
    out = tmp_path / "out"
    _assert_refused(run_cli("score", str(not_a_slide), "--out", str(out)), 2, "notes.svs", "not a whole-slide image")
    _assert_refused(run_cli("score", str(tmp_path / "missing.svs"), "--out", str(out)), 2, "missing.svs")
    _assert_refused(
        run_cli("score", str(small_slide), "--out", str(out), "--model", "no_such_model"),
        2,
        "unknown model 'no_such_model'",
    )
    _assert_refused(
        run_cli("score", str(small_slide), "--out", str(out), "--field-diameter-mm", "0.52"), 2, "field diameter"
    )
    no_mpp = tmp_path / "no-mpp.tif"
    import tifffile

    tifffile.imwrite(no_mpp, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    _assert_refused(run_cli("score", str(no_mpp), "--out", str(out)), 2, "no-mpp.tif", "--mpp")
    port = free_port()
    _assert_refused(
        run_cli(
            "score",
            "s3://slides/a.svs",
            "--out",
            str(out),
            env={"MITOSCOPE_S3_ENDPOINT": f"127.0.0.1:{port}", "MITOSCOPE_CACHE_DIR": str(tmp_path)},
        ),
        3,
        "s3://slides/a.svs",
    )
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_damaged_slide_fails_and_keeps_the_earlier_result(tmp_path: Path) -> None:
    slide = tmp_path / "damaged.svs"
    make_slide(slide, SynthParams(width_px=2048, height_px=2048, seed=4))
    out = tmp_path / "damaged.svs.mitoscope"
    out.mkdir()
    (out / "result.json").write_text('{"earlier": true}')
    data = bytearray(slide.read_bytes())
    start, end = int(len(data) * 0.2), int(len(data) * 0.4)
    data[start:end] = bytes(end - start)  # zero out part of level 0's tile data
    slide.write_bytes(bytes(data))
    _assert_refused(run_cli("score", str(slide), "--threads", "1"), 2, "damaged.svs", "damaged")
    assert json.loads((out / "result.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "damaged.svs",
        "damaged.svs.mitoscope",
        "damaged.svs.truth.json",
    ]


@pytest.mark.slow
def test_cli_scores_and_prints_a_summary(small_slide: Path, tmp_path: Path) -> None:
    proc = run_cli("score", str(small_slide), "--out", str(tmp_path / "r"), "--threads", "1", "--gallery")
    assert proc.returncode == 0, proc.stderr
    assert "Nottingham mitotic score" in proc.stdout and "tiles" in proc.stderr
    assert (tmp_path / "r" / "gallery.png").is_file()


def test_cli_help_explains_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("score", "synth", "demo"):
        assert command in proc.stdout
    score_help = run_cli("score", "--help").stdout
    for option in ("--mpp", "--backend", "--model", "--out", "--field-diameter-mm"):
        assert option in score_help
