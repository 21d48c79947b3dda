"""`mitoscope classify`: the second stage on single figures, one image each, as a pathologist checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from services.detector.classifier import open_classifier
from services.preprocess.errors import NormalisationError
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images


def read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable image (PNG, JPEG or TIFF expected)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def normalised(rgb: npt.NDArray[np.uint8], target: LabStats) -> npt.NDArray[np.uint8]:
    """`rgb` Reinhard-normalised with its own statistics; as it is when it is nearly all glass."""
    try:
        return ReinhardNormaliser(stats_from_images([rgb]), target)(rgb)
    except NormalisationError:
        return rgb


def classify_files(
    paths: list[Path], mpp_um_per_px: float, classifier_name: str, repository: Path, normalise: bool
) -> list[dict[str, Any]]:
    """One row per image: its path, both probabilities and the call at the validated thresholds."""
    images = [read_rgb(p) for p in paths]
    classifier = open_classifier(classifier_name, "onnxruntime", repository, "")
    try:
        if normalise:
            target = LabStats.from_dict(classifier.info.reinhard_target_lab)
            images = [normalised(im, target) for im in images]
        probabilities = classifier.classify_images(images, mpp_um_per_px)
        mitosis_t, atypical_t = classifier.mitosis_threshold, classifier.atypical_threshold
    finally:
        classifier.close()
    rows = []
    for path, (p_mitosis, p_atypical) in zip(paths, probabilities, strict=True):
        call = "look-alike"
        if p_mitosis >= mitosis_t:
            call = "atypical mitosis" if p_atypical >= atypical_t else "mitosis"
        rows.append(
            {
                "path": str(path),
                "mitosis_probability": round(float(p_mitosis), 4),
                "atypical_probability": round(float(p_atypical), 4),
                "call": call,
            }
        )
    return rows
