"""Evaluate a detector on a COCO dataset the MIDOG way, with a PR curve and a Table-II row.

Each image is treated like a small slide: Reinhard statistics over all images of its slide,
512 px tiles at the model's MPP with the pipeline's overlap, the pipeline's post-processing and
border merging. A detection is a true positive within 7.5 µm of a truth centre, each truth is
matched once (greedy by score, nearest first), and precision, recall and F1 come from TP/FP/FN
summed over all images. The score threshold is chosen on the validation set when one is given,
otherwise the model's own validated threshold is used; it is never chosen on the test set.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, MatchCounts, ScoredImage, best_threshold, pr_curve
from services.aggregator.exports import write_png
from services.aggregator.merge import MITOSIS_CLASS, merge_tile_detections
from services.detector.detector import Detector
from services.detector.model import ModelInfo
from services.detector.postprocess import TileDetections
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images
from services.tiler.grid import DEFAULT_OVERLAP_PX, plan_tiles
from services.tiler.tissue import TissueMask
from training.annotations import AnnotationError

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
DEFAULT_MPP_UM_PER_PX = 0.25


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    threshold_source: str  # "validation" or "model"
    test: MatchCounts
    curve: list[tuple[float, MatchCounts]]  # on the test set, for the PR picture only
    images: int
    truths: int


def _load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AnnotationError(f"{path}: image listed in the dataset is missing or unreadable")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def detect_in_image(
    detector: Detector, rgb: npt.NDArray[np.uint8], mpp_um_per_px: float, normalise: ReinhardNormaliser
) -> list[tuple[float, float, float]]:
    """Detections (x, y, score) in image pixels, at the lowest candidate threshold."""
    info = detector.info
    h, w = rgb.shape[:2]
    everything = TissueMask(np.ones((1, 1), bool), float(max(w, h)), mpp_um_per_px)
    plan = plan_tiles(w, h, mpp_um_per_px, everything, info.mpp_um_per_px, info.input_size_px, DEFAULT_OVERLAP_PX)
    scale = plan.level0_px_per_tile_px
    read_px = max(1, int(np.ceil(plan.tile_px * scale - 1e-6)))
    padded = cv2.copyMakeBorder(rgb, 0, read_px, 0, read_px, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    tiles = np.empty((len(plan.tiles), plan.tile_px, plan.tile_px, 3), np.uint8)
    for i, tile in enumerate(plan.tiles):
        x0, y0 = (round(v) for v in tile.level0_origin(scale))
        region = padded[y0 : y0 + read_px, x0 : x0 + read_px]
        tiles[i] = region if read_px == plan.tile_px else cv2.resize(region, (plan.tile_px, plan.tile_px))
    per_tile: dict[int, TileDetections] = {}
    decoded = detector.detect(normalise(tiles), min(THRESHOLDS))
    for tile, detections in zip(plan.tiles, decoded, strict=True):
        per_tile[tile.index] = detections
    merged = merge_tile_detections(plan, per_tile, info.class_names)
    return [(d.x_px, d.y_px, d.score) for d in merged if d.class_name == MITOSIS_CLASS]


def score_coco(detector: Detector, coco_path: Path, image_root: Path) -> tuple[list[ScoredImage], float]:
    """Run the model over every image of a COCO file; returns scored images and their MPP."""
    try:
        coco = json.loads(coco_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{coco_path}: cannot read the COCO file: {e}") from e
    if not coco.get("images"):
        raise AnnotationError(f"{coco_path}: the dataset has no images")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    truths: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for ann in coco["annotations"]:
        if names.get(ann["category_id"]) == MITOSIS_CLASS:
            x, y, bw, bh = ann["bbox"]
            truths[ann["image_id"]].append((x + bw / 2, y + bh / 2))
    target = LabStats.from_dict(detector.info.reinhard_target_lab)
    by_slide: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for image in coco["images"]:
        by_slide[str(image.get("slide", image["file_name"]))].append(image)
    scored: list[ScoredImage] = []
    mpps = set()
    for images in by_slide.values():
        pixels = [_load_rgb(image_root / image["file_name"]) for image in images]
        normalise = ReinhardNormaliser(stats_from_images(pixels), target)
        for image, rgb in zip(images, pixels, strict=True):
            mpp = float(image.get("mpp", DEFAULT_MPP_UM_PER_PX))
            mpps.add(mpp)
            scored.append((detect_in_image(detector, rgb, mpp, normalise), truths[image["id"]]))
    if len(mpps) != 1:
        raise AnnotationError(f"{coco_path}: images at several resolutions {sorted(mpps)}; evaluate them apart")
    return scored, mpps.pop()


def evaluate(detector: Detector, test_coco: Path, image_root: Path, val_coco: Path | None = None) -> Evaluation:
    test, mpp = score_coco(detector, test_coco, image_root)
    radius_px = MIDOG_MATCH_RADIUS_UM / mpp
    if val_coco is not None:
        val, val_mpp = score_coco(detector, val_coco, image_root)
        threshold, _ = best_threshold(pr_curve(val, MIDOG_MATCH_RADIUS_UM / val_mpp, THRESHOLDS))
        source = "validation"
    else:
        threshold, source = detector.info.score_threshold, "model"
    curve = pr_curve(test, radius_px, THRESHOLDS)
    ((_, counts),) = pr_curve(test, radius_px, [threshold])
    return Evaluation(threshold, source, counts, curve, len(test), sum(len(t) for _, t in test))


def render_pr_curve(evaluation: Evaluation, title: str, size_px: int = 480) -> npt.NDArray[np.uint8]:
    """Precision (y) against recall (x) over thresholds; the chosen operating point in red."""
    margin = 48
    canvas = np.full((size_px, size_px, 3), 255, np.uint8)
    span = size_px - 2 * margin

    def point(recall: float, precision: float) -> tuple[int, int]:
        return margin + round(recall * span), size_px - margin - round(precision * span)

    cv2.rectangle(canvas, point(0, 0), point(1, 1), (160, 160, 160), 1)
    for tick in (0.25, 0.5, 0.75):
        cv2.line(canvas, point(tick, 0), point(tick, 1), (230, 230, 230), 1)
        cv2.line(canvas, point(0, tick), point(1, tick), (230, 230, 230), 1)
    points = [point(c.recall, c.precision) for _, c in evaluation.curve if c.tp + c.fp > 0]
    for a, b in itertools.pairwise(points):
        cv2.line(canvas, a, b, (40, 90, 200), 2, cv2.LINE_AA)
    chosen = evaluation.test
    cv2.circle(canvas, point(chosen.recall, chosen.precision), 6, (220, 20, 20), -1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, title, (margin, 28), font, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    cv2.putText(canvas, "recall", (size_px // 2 - 20, size_px - 14), font, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
    cv2.putText(canvas, "precision", (4, margin - 8), font, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
    cv2.putText(
        canvas,
        f"threshold {evaluation.threshold:.2f} ({evaluation.threshold_source}): F1 {chosen.f1:.3f}",
        (margin, size_px - 30),
        font,
        0.42,
        (220, 20, 20),
        1,
        cv2.LINE_AA,
    )
    return canvas


def table_row(dataset: str, train_size: str, evaluation: Evaluation, model: str, training_time: str) -> str:
    c = evaluation.test
    return (
        f"| {dataset} | {train_size} / {evaluation.images} | {model} | {c.f1:.3f} | {c.recall:.3f} | "
        f"{c.precision:.3f} | {training_time} |"
    )


def training_images(model_extra: dict[str, str]) -> str:
    """How many images the model was trained on, from its `mitoscope.data` metadata."""
    try:
        counts = json.loads(model_extra.get("data", "{}"))
    except json.JSONDecodeError:
        return "?"
    total = sum(v for k, v in counts.items() if k.startswith("train_"))
    return str(total) if total else "?"


TABLE_HEADER = (
    "| dataset | train / test images | model | F1 | recall | precision | training time |\n|---|---|---|---|---|---|---|"
)


def evaluation_document(evaluation: Evaluation, model: ModelInfo) -> dict[str, Any]:
    """The content of evaluation.json: the model, the threshold and its source, counts, metrics, the test curve."""
    c = evaluation.test
    return {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "threshold": evaluation.threshold,
        "threshold_source": evaluation.threshold_source,
        "images": evaluation.images,
        "truths": evaluation.truths,
        "tp": c.tp,
        "fp": c.fp,
        "fn": c.fn,
        "precision": c.precision,
        "recall": c.recall,
        "f1": c.f1,
        "curve": [{"threshold": t, "tp": m.tp, "fp": m.fp, "fn": m.fn} for t, m in evaluation.curve],
    }


def write_evaluation(out_dir: Path, evaluation: Evaluation, model: ModelInfo, dataset: str) -> str:
    """Write evaluation.json, pr_curve.png and report.md into `out_dir`; returns the report's table row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation_document(evaluation, model), indent=1))
    write_png(render_pr_curve(evaluation, f"{model.name} on {dataset}"), out_dir / "pr_curve.png")
    row = table_row(
        dataset,
        training_images(model.extra),
        evaluation,
        f"{model.name} v{model.version}",
        f"{model.extra.get('train_seconds', '?')} s",
    )
    (out_dir / "report.md").write_text(f"{TABLE_HEADER}\n{row}\n")
    return row
