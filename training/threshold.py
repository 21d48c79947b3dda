"""Choose the detection score threshold on the validation split, never on test.

The validation images (256 px, already Reinhard-normalised by the dataset builder) are packed
four to a 512 px tile, run through the exported ONNX model, and matched to their labels the MIDOG
way (7.5 µm); the threshold with the best F1 from summed TP/FP/FN wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, MatchCounts, ScoredImage, best_threshold, pr_curve
from services.detector.backends import OnnxRuntimeBackend
from services.detector.postprocess import decode
from training.mosaic import pack, split

CANDIDATE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
MPP_UM_PER_PX = 0.25


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    counts: MatchCounts
    curve: tuple[tuple[float, MatchCounts], ...]  # (threshold, counts) for every candidate


def _val_images(dataset_dir: Path) -> list[tuple[np.ndarray, list[tuple[float, float]]]]:
    items = []
    for image_path in sorted((dataset_dir / "images" / "val").glob("*.png")):
        bgr = cv2.imread(str(image_path))
        h, w = bgr.shape[:2]
        label_path = dataset_dir / "labels" / "val" / f"{image_path.stem}.txt"
        centres = []
        for line in label_path.read_text().splitlines() if label_path.exists() else []:
            _, xc, yc, _, _ = (float(v) for v in line.split())
            centres.append((xc * w, yc * h))
        items.append((cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), centres))
    return items


def choose_threshold(model_path: Path, dataset_dir: Path) -> ThresholdChoice:
    backend = OnnxRuntimeBackend(model_path)
    size = backend.info.input_size_px
    items = _val_images(dataset_dir)
    if not items:
        raise ValueError(f"{dataset_dir}: no validation images")
    cell = items[0][0].shape[0]
    per_tile = (size // cell) ** 2
    scored: list[ScoredImage] = []
    for start in range(0, len(items), per_tile):
        group = items[start : start + per_tile]
        tile, offsets = pack([rgb for rgb, _ in group], size)
        (dets,) = decode(backend.infer(tile[None]), backend.info.output_format, min(CANDIDATE_THRESHOLDS))
        for found, (_, centres) in zip(split(dets.boxes_px, dets.scores, offsets, cell), group, strict=True):
            scored.append((found, centres))
    backend.close()
    curve = pr_curve(scored, MIDOG_MATCH_RADIUS_UM / MPP_UM_PER_PX, CANDIDATE_THRESHOLDS)
    threshold, counts = best_threshold(curve)
    return ThresholdChoice(threshold, counts, tuple(curve))
