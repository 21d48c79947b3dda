"""`mitoscope dataset`: annotation folders to COCO + YOLO datasets through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_file


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mitoscope.cli", "dataset", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_platform_folder_becomes_coco_and_yolo(tmp_path: Path) -> None:
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    annotations.mkdir()
    for slide in range(5):
        for tile in range(2):
            name = f"s{slide}_t{tile}.png"
            cv2.imwrite(str(images / name), np.full((256, 256, 3), 200, np.uint8))
            doc = {
                "image": name,
                "slide": f"slide-{slide}",
                "width_px": 256,
                "height_px": 256,
                "mpp_um_per_px": 0.25,
                "annotations": [
                    {"cx_px": 128, "cy_px": 128, "semi_major_px": 20, "semi_minor_px": 15, "label": "mitosis"}
                ],
            }
            (annotations / f"s{slide}_t{tile}.json").write_text(json.dumps(doc))
    proc = _cli("platform", str(annotations), "--images", str(images), "--out", str(tmp_path / "ds"))
    assert proc.returncode == 0, proc.stderr
    train = json.loads((tmp_path / "ds" / "coco" / "train.json").read_text())
    test = json.loads((tmp_path / "ds" / "coco" / "test.json").read_text())
    assert len(train["images"]) == 8 and len(test["images"]) == 2
    assert {i["slide"] for i in train["images"]}.isdisjoint({i["slide"] for i in test["images"]})
    labels = sorted((tmp_path / "ds" / "yolo" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 8 and labels[0].read_text().startswith("0 0.5")


def test_mitos_csvs_pair_with_their_images_and_slides(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("A00_01", "A00_02", "A01_01", "A02_01", "A03_01"):
        cv2.imwrite(str(images / f"{name}.png"), np.full((300, 300, 3), 200, np.uint8))
        (images / f"{name}.csv").write_text("100,100,101,100,101,101\n")
    proc = _cli("mitos2012", str(images), "--images", str(images), "--out", str(tmp_path / "ds"), "--mpp", "0.2456")
    assert proc.returncode == 0, proc.stderr
    coco = [json.loads((tmp_path / "ds" / "coco" / f"{s}.json").read_text()) for s in ("train", "test")]
    slides = [{i["slide"] for i in c["images"]} for c in coco]
    assert slides[0] | slides[1] == {"A00", "A01", "A02", "A03"} and not slides[0] & slides[1]


def test_bad_input_names_the_file_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "bad.json").write_text('{"image": "x.png"')
    proc = _cli("platform", str(tmp_path / "annotations"), "--images", str(tmp_path), "--out", str(tmp_path / "ds"))
    assert proc.returncode == 2 and "bad.json" in proc.stderr
    assert not (tmp_path / "ds").exists()
    proc = _cli("centroids", str(tmp_path / "annotations"), "--images", str(tmp_path), "--out", str(tmp_path / "ds"))
    assert proc.returncode == 2 and "--mpp" in proc.stderr


@pytest.mark.shared
def test_amibr_point_list_converts_with_whole_slides_held_out(tmp_path: Path) -> None:
    amibr = shared_file("data/amibr")
    proc = _cli(
        "points",
        str(amibr / "amibr_patch_points.csv"),
        "--images",
        str(amibr),
        "--out",
        str(tmp_path / "ds"),
        "--mpp",
        "0.25",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())["counts"]
    assert manifest["train_images"] + manifest["test_images"] == 3720
    assert manifest["train_annotations"] + manifest["test_annotations"] == 3816
