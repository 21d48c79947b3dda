"""`mitoscope evaluate` on a small COCO dataset made from synthetic images with known mitoses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, best_threshold, pr_curve
from mitoscope.synth import SynthParams, synthesize
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from tests.conftest import MODEL_PATH, REPO_ROOT
from training.annotations import AnnotatedImage, Figure
from training.datasets import coco_document
from training.evaluate import THRESHOLDS, score_coco


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    splits: dict[str, list[AnnotatedImage]] = {"val": [], "test": []}
    for seed, split in ((31, "val"), (32, "val"), (33, "test"), (34, "test")):
        image = synthesize(SynthParams(1024, 1024, seed=seed, tissue_fraction=0.8, mitoses_per_mm2=30.0))
        name = f"img-{seed}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR))
        figures = tuple(Figure("mitosis", m.x_px, m.y_px, "point") for m in image.mitoses)
        splits[split].append(AnnotatedImage(name, f"slide-{seed}", 1024, 1024, 0.25, figures))
    for split, images in splits.items():
        (root / f"{split}.json").write_text(json.dumps(coco_document(images)))
    return root


@pytest.mark.slow
def test_evaluate_writes_metrics_curve_and_table_with_a_threshold_from_validation(
    coco_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mitoscope.cli",
            "evaluate",
            str(coco_dataset / "test.json"),
            "--images",
            str(coco_dataset),
            "--val",
            str(coco_dataset / "val.json"),
            "--out",
            str(out),
            "--dataset",
            "synthetic",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert report["threshold_source"] == "validation"
    assert report["tp"] + report["fn"] == report["truths"] > 0
    assert report["f1"] == pytest.approx(2 * report["tp"] / (2 * report["tp"] + report["fp"] + report["fn"]))
    assert "| synthetic |" in (out / "report.md").read_text()
    assert cv2.imread(str(out / "pr_curve.png")) is not None

    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1))
    val, mpp = score_coco(detector, coco_dataset / "val.json", coco_dataset)
    detector.close()
    threshold, _ = best_threshold(pr_curve(val, MIDOG_MATCH_RADIUS_UM / mpp, THRESHOLDS))
    assert report["threshold"] == threshold


def test_evaluate_refuses_a_dataset_with_missing_images(coco_dataset: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mitoscope.cli",
            "evaluate",
            str(coco_dataset / "test.json"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 2
    assert "missing or unreadable" in proc.stderr
