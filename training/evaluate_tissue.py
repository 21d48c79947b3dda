"""Figures on real tissue that no model here was trained on: what the count means on real slides.

- **Look-alikes**: the held-out (published test) images of CoNSeP and NuCLS, resampled to
  0.25 µm/px and Reinhard-normalised per source image. A call is false when the labelled nucleus
  nearest to it (within 7.5 µm) is a look-alike (inflammatory, spindle, stromal, lymphocyte,
  other) or when no labelled nucleus is that near; calls nearest an epithelial or tumour
  nucleus are left out, since those sets have no mitosis class and such a call may be right.
  Reported as false calls per 100 look-alike nuclei.
- **CMU-1** (a real 20x Aperio slide without mitosis labels): calls per mm² of tissue through
  the whole pipeline. Breast tumours rarely exceed ~10 mitoses per mm²; this tissue shows none
  convincingly, so every call counts against the model.
- **Atypia**: the classifier on the centre of every AMi-Br crop of the held-out source slides,
  balanced accuracy of atypical vs normal at its validated threshold.
"""

from __future__ import annotations

import csv
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mitoscope.pipeline import ScoreOptions, score_slide
from services.detector.classifier import CropClassifier
from services.detector.detector import Detector
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images
from training.classifier_data import (
    CONSEP_MPP,
    CONSEP_NEGATIVE_TYPES,
    NUCLS_MPP,
    NUCLS_NEGATIVE_CLASSES,
    consep_labels,
    resample,
)
from training.yolo_dataset import Crop, load_rgb, read_amibr, split_slides

MATCH_RADIUS_PX = 7.5 / 0.25
TILE_PX = 512


@dataclass(frozen=True)
class LabelledImage:
    group: str
    rgb: npt.NDArray[np.uint8]  # 0.25 µm/px, not yet normalised
    look_alikes: list[tuple[float, float]]
    uncertain: list[tuple[float, float]]  # epithelial / tumour nuclei: may be mitoses


def lookalike_images(shared_data: Path, split: str = "test") -> Iterator[tuple[str, list[LabelledImage]]]:
    """(source, images) of one source image at a time, so statistics are per source image; `split`
    is "test" (the published test images) or "val" (the images the classifier validates on)."""
    consep = shared_data / "consep"
    by_source: dict[str, list[Path]] = defaultdict(list)
    for path in sorted((consep / "images" / ("test" if split == "test" else "train")).glob("*.jpg")):
        number = int(path.stem.split("_")[1])
        if split == "test" or number % 5 == 0:  # as classifier_data.add_consep splits
            by_source["_".join(path.stem.split("_")[:2])].append(path)
    for source, paths in sorted(by_source.items()):
        images = []
        for path in paths:
            rgb, factor = resample(load_rgb(path), CONSEP_MPP)
            centroids, types = consep_labels(consep / "type_mat" / path.parent.name / f"{path.stem}.mat")
            points = [
                ((float(x) * factor, float(y) * factor), int(t)) for (x, y), t in zip(centroids, types, strict=True)
            ]
            images.append(
                LabelledImage(
                    f"consep/{source}",
                    rgb,
                    [p for p, t in points if t in CONSEP_NEGATIVE_TYPES],
                    [p for p, t in points if t not in CONSEP_NEGATIVE_TYPES],
                )
            )
        yield "consep", images
    nucls = sorted((shared_data / "nucls" / "test" / "images").glob("*.png"))
    if split != "test":  # as classifier_data.add_nucls splits
        nucls = [shared_data / "nucls" / "train" / "images" / f"{name}.png" for name in ("train_9", "train_10")]
    for path in nucls:
        rgb, factor = resample(load_rgb(path), NUCLS_MPP)
        rows = [r for r in csv.reader((path.parent.parent / "labels" / f"{path.stem}.csv").open()) if r]
        points = [((float(r[0]) * factor, float(r[1]) * factor), int(r[2])) for r in rows]
        yield (
            "nucls",
            [
                LabelledImage(
                    f"nucls/{path.stem}",
                    rgb,
                    [p for p, c in points if c in NUCLS_NEGATIVE_CLASSES],
                    [p for p, c in points if c not in NUCLS_NEGATIVE_CLASSES],
                )
            ],
        )


def calls_on_image(
    detector: Detector, rgb: npt.NDArray[np.uint8], threshold: float | None
) -> list[tuple[float, float]]:
    """Call centres on an image of any size, tile by tile (reflect-padded to whole tiles)."""
    import cv2

    h, w = rgb.shape[:2]
    padded = cv2.copyMakeBorder(rgb, 0, (-h) % TILE_PX, 0, (-w) % TILE_PX, cv2.BORDER_REFLECT_101)
    centres = []
    for ty in range(0, padded.shape[0], TILE_PX):
        for tx in range(0, padded.shape[1], TILE_PX):
            tile = np.ascontiguousarray(padded[ty : ty + TILE_PX, tx : tx + TILE_PX])[None]
            (found,) = detector.detect(tile, threshold)
            for x0, y0, x1, y1 in found.boxes_px:
                cx, cy = tx + float(x0 + x1) / 2, ty + float(y0 + y1) / 2
                if cx < w and cy < h:
                    centres.append((cx, cy))
    return centres


def false_calls_on_lookalikes(
    detector: Detector, shared_data: Path, threshold: float | None = None, split: str = "test"
) -> dict[str, dict[str, float]]:
    """Per data set: look-alike nuclei, false calls, calls left out, and false calls per 100."""
    target = LabStats.from_dict(detector.info.reinhard_target_lab)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"look_alikes": 0, "false_calls": 0, "left_out": 0})
    for source, images in lookalike_images(shared_data, split):
        normalise = ReinhardNormaliser(stats_from_images([im.rgb for im in images]), target)
        for image in images:
            labelled = [(p, True) for p in image.look_alikes] + [(p, False) for p in image.uncertain]
            coords = np.array([p for p, _ in labelled], np.float64).reshape(-1, 2)
            entry = totals[source]
            entry["look_alikes"] += len(image.look_alikes)
            for x, y in calls_on_image(detector, normalise(image.rgb), threshold):
                distance = np.hypot(coords[:, 0] - x, coords[:, 1] - y) if len(coords) else np.array([np.inf])
                nearest = int(np.argmin(distance))
                if distance[nearest] <= MATCH_RADIUS_PX and not labelled[nearest][1]:
                    entry["left_out"] += 1
                else:
                    entry["false_calls"] += 1
    for entry in totals.values():
        entry["false_calls_per_100"] = round(100 * entry["false_calls"] / max(entry["look_alikes"], 1), 2)
    return dict(totals)


def calls_per_mm2(detector: Detector, slide: Path, threshold: float | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = score_slide(slide, Path(tmp) / "out", detector, ScoreOptions(score_threshold=threshold))
    return {
        "calls": result["mitosis_count"],
        "tissue_area_mm2": result["tissue_area_mm2"],
        "calls_per_mm2": round(result["mitosis_count"] / max(result["tissue_area_mm2"], 1e-9), 2),
        "mitotic_score": result["mitotic_score"],
    }


def held_out_amibr(amibr: Path, seed: int = 0, split: str = "test") -> dict[str, list[Crop]]:
    """The AMi-Br crops of the source slides every training here held out ("test") or validates on
    ("val"), by slide (the seeded split `training.yolo_dataset` and the classifier's samples use)."""
    crops = read_amibr(amibr)
    split_of = split_slides([c.source_slide for c in crops], seed, 0.15, 0.1)
    by_slide: dict[str, list[Crop]] = defaultdict(list)
    for crop in crops:
        if split_of[crop.source_slide] == split:
            by_slide[crop.source_slide].append(crop)
    return dict(by_slide)


def atypical_balanced_accuracy(classifier: CropClassifier, amibr: Path) -> dict[str, float]:
    """The classifier's atypical call on every listed figure of the held-out AMi-Br source slides."""
    target = LabStats.from_dict(classifier.info.reinhard_target_lab)
    predicted, truth = [], []
    for members in held_out_amibr(amibr).values():
        images = [load_rgb(c.path) for c in members]
        normalise = ReinhardNormaliser(stats_from_images(images), target)
        probabilities = classifier.classify_images([normalise(im) for im in images])
        predicted += list(probabilities[:, 1] >= classifier.atypical_threshold)
        truth += [c.path.parent.name == "atypical" for c in members]
    p, t = np.array(predicted), np.array(truth)
    sensitivity, specificity = float(p[t].mean()), float((~p[~t]).mean())
    return {
        "figures": len(t),
        "atypical": int(t.sum()),
        "sensitivity": round(sensitivity, 4),
        "specificity": round(specificity, 4),
        "balanced_accuracy": round((sensitivity + specificity) / 2, 4),
    }
