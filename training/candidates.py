"""Where the second stage starts: the detector threshold its candidates come from, chosen on
validation data only (the AMi-Br validation slides for recall; the CoNSeP and NuCLS validation
images and the ICPR 2012 validation field for false calls).

A low candidate threshold lets the classifier see figures the detector doubts, but every extra
candidate is a chance for a false call; the detector's own validated threshold keeps the two
stages a strict filter. The choice: the fewest validation false calls among the candidate
thresholds whose two-stage validation recall is at least `MIN_RECALL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.detector.backends import OnnxRuntimeBackend
from services.detector.classifier import CropClassifier, TwoStageDetector
from services.detector.detector import ModelDetector
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images
from training.classifier_data import ICPR_MPP, icpr_mitoses
from training.evaluate_shipped import evaluate_amibr
from training.evaluate_tissue import MATCH_RADIUS_PX, calls_on_image, false_calls_on_lookalikes
from training.samples import resample
from training.yolo_dataset import load_rgb

CANDIDATE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
MIN_RECALL = 0.95


@dataclass(frozen=True)
class CandidateChoice:
    threshold: float
    rows: list[dict[str, Any]]  # one per candidate threshold tried


def icpr_validation_false_calls(two_stage: TwoStageDetector, shared_data: Path) -> tuple[int, float]:
    """Calls on the ICPR validation field away from its listed mitoses, and its area in mm²."""
    image_path = shared_data / "icpr12" / "A00_02.jpg"
    rgb, factor = resample(load_rgb(image_path), ICPR_MPP)
    target = LabStats.from_dict(two_stage.info.reinhard_target_lab)
    mitoses = icpr_mitoses(image_path.with_suffix(".csv"), factor)
    calls = calls_on_image(two_stage, ReinhardNormaliser(stats_from_images([rgb]), target)(rgb), None)
    false = sum(1 for x, y in calls if all(np.hypot(x - mx, y - my) > MATCH_RADIUS_PX + r for mx, my, r in mitoses))
    return false, rgb.shape[0] * rgb.shape[1] * (0.25 / 1000) ** 2


def choose_candidate_threshold(
    detector_path: Path, classifier_path: Path, shared_data: Path, seed: int
) -> CandidateChoice:
    """`seed`: the training run's, so the validation slides are the ones it validated on."""
    rows: list[dict[str, Any]] = []
    for threshold in CANDIDATE_THRESHOLDS:
        two_stage = TwoStageDetector(
            ModelDetector(OnnxRuntimeBackend(detector_path)),
            CropClassifier(OnnxRuntimeBackend(classifier_path)),
            candidate_threshold=threshold,
        )
        try:
            recall = evaluate_amibr(two_stage, shared_data / "amibr", None, split="val", seed=seed).recall
            lookalikes = false_calls_on_lookalikes(two_stage, shared_data, None, split="val")
            icpr_false, icpr_mm2 = icpr_validation_false_calls(two_stage, shared_data)
        finally:
            two_stage.close()
        false_calls = sum(v["false_calls"] for v in lookalikes.values()) + icpr_false
        rows.append(
            {
                "candidate_threshold": threshold,
                "val_recall": round(recall, 4),
                "val_false_calls": false_calls,
                "val_lookalike_false_calls_per_100": {k: v["false_calls_per_100"] for k, v in lookalikes.items()},
                "val_icpr_false_calls_per_mm2": round(icpr_false / icpr_mm2, 2),
            }
        )
        print(f"candidate threshold {threshold}: {rows[-1]}", flush=True)
    eligible = [r for r in rows if r["val_recall"] >= MIN_RECALL] or [max(rows, key=lambda r: r["val_recall"])]
    best = min(eligible, key=lambda r: (r["val_false_calls"], -r["val_recall"]))
    return CandidateChoice(float(best["candidate_threshold"]), rows)
