"""The second stage: crops around candidates, the shipped classifier, two stages end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, match_points
from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.slide_files import truth_path_for
from services.aggregator.merge import ATYPICAL_CLASS, MITOSIS_CLASS
from services.detector.backends import OnnxRuntimeBackend, TritonBackend
from services.detector.classifier import CropClassifier, TwoStageDetector, crops_around
from services.detector.detector import ModelDetector, open_detector
from services.detector.errors import ModelError
from services.detector.model import DEFAULT_CLASSIFIER_NAME
from services.detector.triton_server import TritonServer
from tests.conftest import MODEL_PATH, MODEL_REPOSITORY, run_cli

CLASSIFIER_PATH = MODEL_REPOSITORY / DEFAULT_CLASSIFIER_NAME / "1" / "model.onnx"


def _classifier() -> CropClassifier:
    return CropClassifier(OnnxRuntimeBackend(CLASSIFIER_PATH, threads=1))


def test_crops_are_centred_and_mirrored_at_the_edges() -> None:
    image = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    image[50, 60] = (255, 0, 0)
    crops = crops_around(image, np.array([[60, 50], [0, 0], [119, 99]], np.float32), 20)
    assert crops.shape == (3, 20, 20, 3)
    assert tuple(crops[0, 10, 10]) == (255, 0, 0)
    np.testing.assert_array_equal(crops[1, 10:, 10:], image[:10, :10])  # inside part of a corner crop
    np.testing.assert_array_equal(crops[1, 9, 10:], image[1, :10])  # mirrored, not zero-filled
    odd = crops_around(image, np.array([[119, 99], [0, 0]], np.float32), 21)  # odd sizes fit at every edge
    assert odd.shape == (2, 21, 21, 3) and tuple(odd[0, 10, 10]) == tuple(image[99, 119])


def test_shipped_classifier_declares_its_contract() -> None:
    classifier = _classifier()
    info = classifier.info
    assert info.name == DEFAULT_CLASSIFIER_NAME and info.mpp_um_per_px == 0.25
    assert info.class_names == ("mitosis", "atypical")
    assert 0 < classifier.candidate_threshold < 1 and 0 < classifier.mitosis_threshold < 1
    assert 0 < classifier.atypical_threshold < 1
    detector_target = OnnxRuntimeBackend(MODEL_PATH, threads=1).info.reinhard_target_lab
    assert info.reinhard_target_lab == detector_target  # trained on crops normalised like the tiles
    probabilities = classifier.classify(np.zeros((3, classifier.crop_px, classifier.crop_px, 3), np.uint8))
    assert probabilities.shape == (3, 2) and ((probabilities >= 0) & (probabilities <= 1)).all()
    assert CLASSIFIER_PATH.stat().st_size < 25 * 1024 * 1024
    classifier.close()


def test_a_detector_is_refused_as_a_classifier() -> None:
    with pytest.raises(ModelError, match="not a crop classifier"):
        CropClassifier(OnnxRuntimeBackend(MODEL_PATH, threads=1))


def test_two_stage_detections_carry_both_probabilities(e2e_tiles: np.ndarray) -> None:
    two_stage = TwoStageDetector(ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1)), _classifier())
    try:
        found = two_stage.detect(e2e_tiles)
    finally:
        two_stage.close()
    assert two_stage.info.class_names == (MITOSIS_CLASS, ATYPICAL_CLASS)
    assert sum(len(t) for t in found) >= len(e2e_tiles) // 2  # the tiles are centred on planted mitoses
    for tile in found:
        assert tile.mitosis_probabilities is not None and tile.atypical_probabilities is not None
        assert (tile.mitosis_probabilities >= two_stage.info.score_threshold).all()
        atypical = tile.atypical_probabilities >= two_stage.classifier.atypical_threshold
        np.testing.assert_array_equal(tile.class_ids, atypical.astype(np.int64))


@pytest.mark.slow
def test_two_stage_pipeline_still_finds_the_planted_mitoses(e2e_slide: Path, tmp_path: Path) -> None:
    detector = open_detector("yolov5n_mitosis", "onnxruntime", MODEL_REPOSITORY, "", threads=0)
    try:
        assert isinstance(detector, TwoStageDetector)
        result = score_slide(e2e_slide, tmp_path / "out", detector, ScoreOptions(batch_size=16))
    finally:
        detector.close()
    truth = json.loads(truth_path_for(e2e_slide).read_text())
    counts = match_points(
        ((d["x_px"], d["y_px"], d["mitosis_probability"]) for d in result["detections"]),
        ((m["x_px"], m["y_px"]) for m in truth["mitoses"]),
        MIDOG_MATCH_RADIUS_UM / truth["mpp_um_per_px"],
    )
    assert counts.recall >= 0.8 and counts.precision >= 0.8, counts
    assert result["atypical_count"] == sum(d["class"] == ATYPICAL_CLASS for d in result["detections"])
    assert all(0 <= d["atypical_probability"] <= 1 for d in result["detections"])
    assert result["provenance"]["model"]["name"] == f"yolov5n_mitosis+{DEFAULT_CLASSIFIER_NAME}"
    geojson = json.loads((tmp_path / "out" / "result.geojson").read_text())
    names = {f["properties"]["classification"]["name"] for f in geojson["features"]}
    assert names <= {"Mitosis", "Atypical mitosis", "Hotspot"}


def test_classify_prints_one_json_object_per_image(e2e_tiles: np.ndarray, tmp_path: Path) -> None:
    paths = []
    for i, tile in enumerate(e2e_tiles[:2]):
        paths.append(tmp_path / f"figure-{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(tile[176:336, 176:336], cv2.COLOR_RGB2BGR))
    half = tmp_path / "half-resolution.png"  # the same figure at 0.5 µm/px
    cv2.imwrite(str(half), cv2.resize(cv2.imread(str(paths[0])), (80, 80), interpolation=cv2.INTER_AREA))
    proc = run_cli("classify", *map(str, paths), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    for row in rows:
        assert set(row) == {"path", "mitosis_probability", "atypical_probability", "call"}
        assert 0 <= row["mitosis_probability"] <= 1 and 0 <= row["atypical_probability"] <= 1
    resampled = run_cli("classify", str(half), "--mpp", "0.5", "--json")
    assert resampled.returncode == 0, resampled.stderr
    assert json.loads(resampled.stdout)["mitosis_probability"] == pytest.approx(
        rows[0]["mitosis_probability"], abs=0.25
    )


def test_classify_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    proc = run_cli("classify", str(bogus))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "notes.png" in proc.stderr


@pytest.mark.parametrize("command", ["yolo", "frcnn", "classifier"])
def test_training_help_works_without_the_training_venv(command: str, tmp_path: Path) -> None:
    proc = run_cli("train", command, "--help", env={"MITOSCOPE_TRAIN_VENV": str(tmp_path / "absent")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: mitoscope train {command}")
    refused = run_cli("train", command, env={"MITOSCOPE_TRAIN_VENV": str(tmp_path / "absent")})
    assert refused.returncode == 2 and "make train-venv" in refused.stderr


@pytest.mark.integration
def test_triton_classifies_like_onnxruntime(triton_server: TritonServer) -> None:
    crops = np.random.default_rng(1).integers(0, 256, (5, 80, 80, 3), dtype=np.uint8)
    local = _classifier()
    remote = CropClassifier(TritonBackend(triton_server.grpc_url, DEFAULT_CLASSIFIER_NAME))
    try:
        assert remote.info == local.info
        np.testing.assert_allclose(remote.classify(crops), local.classify(crops), atol=1e-5)
    finally:
        local.close()
        remote.close()


@pytest.mark.slow
def test_a_dicom_folder_is_scored_with_both_stages(tmp_path: Path) -> None:
    from mitoscope.synth import SynthParams, synthesize
    from tests.tiler.test_qc import _write_dicom_series

    image = synthesize(SynthParams(width_px=2048, height_px=2048, seed=77, tissue_fraction=0.8, mitoses_per_mm2=40.0))
    _write_dicom_series(tmp_path / "case-dicom", image.rgb, "YBR_FULL_422")
    proc = run_cli("score", f"{tmp_path / 'case-dicom'}/")  # as tab completion gives a folder
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "case-dicom.mitoscope" / "result.json").read_text())
    assert result["slide"]["reader"] == "openslide" and result["slide"]["vendor"] == "dicom"
    assert result["qc"]["verdict"] == "ok"
    counts = match_points(
        ((d["x_px"], d["y_px"], d["mitosis_probability"]) for d in result["detections"]),
        ((m.x_px, m.y_px) for m in image.mitoses),
        MIDOG_MATCH_RADIUS_UM / 0.25,
    )
    assert len(image.mitoses) >= 5 and counts.recall >= 0.7, counts
