"""Raw model output to boxes: score threshold, then non-maximum suppression, per tile."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_IOU_THRESHOLD = 0.45
MAX_DETECTIONS_PER_TILE = 300


@dataclass(frozen=True)
class TileDetections:
    """Boxes (n, 4) as x0, y0, x1, y1 in tile pixels, with scores and class ids; with a second
    stage, also each box's mitosis and atypical probabilities (None without one)."""

    boxes_px: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int64]
    mitosis_probabilities: npt.NDArray[np.float32] | None = None
    atypical_probabilities: npt.NDArray[np.float32] | None = None

    @classmethod
    def empty(cls) -> TileDetections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def nms(boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        ix0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        iy0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        ix1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        iy1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


def decode_yolo(
    raw: npt.NDArray[np.float32],
    score_threshold: float,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> list[TileDetections]:
    """(n, 4 + classes, anchors) YOLO output (centre x, centre y, w, h, class scores) -> boxes."""
    if raw.ndim != 3 or raw.shape[1] < 5:
        raise ValueError(f"unexpected YOLO output shape {raw.shape}")
    results = []
    for per_tile in raw:
        class_scores = per_tile[4:]
        class_ids = class_scores.argmax(axis=0)
        scores = class_scores.max(axis=0)
        keep = scores >= score_threshold
        if not keep.any():
            results.append(TileDetections.empty())
            continue
        cx, cy, w, h = per_tile[0, keep], per_tile[1, keep], per_tile[2, keep], per_tile[3, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
        kept_scores = scores[keep].astype(np.float32)
        kept_ids = class_ids[keep].astype(np.int64)
        chosen = nms(boxes, kept_scores, iou_threshold)[:MAX_DETECTIONS_PER_TILE]
        results.append(TileDetections(boxes[chosen], kept_scores[chosen], kept_ids[chosen]))
    return results


def decode_boxes(
    raw: npt.NDArray[np.float32], score_threshold: float, iou_threshold: float = DEFAULT_IOU_THRESHOLD
) -> list[TileDetections]:
    """(n, boxes, 6) rows of x0, y0, x1, y1, score, class (zero rows are padding) -> boxes."""
    if raw.ndim != 3 or raw.shape[2] != 6:
        raise ValueError(f"unexpected box-list output shape {raw.shape}")
    results = []
    for rows in raw:
        keep = rows[:, 4] >= max(score_threshold, 1e-9)
        if not keep.any():
            results.append(TileDetections.empty())
            continue
        boxes = rows[keep, :4].astype(np.float32)
        scores = rows[keep, 4].astype(np.float32)
        class_ids = rows[keep, 5].astype(np.int64)
        chosen = nms(boxes, scores, iou_threshold)[:MAX_DETECTIONS_PER_TILE]
        results.append(TileDetections(boxes[chosen], scores[chosen], class_ids[chosen]))
    return results


def decode(
    raw: npt.NDArray[np.float32],
    output_format: str,
    score_threshold: float,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> list[TileDetections]:
    """Decode a model's raw output by its declared `mitoscope.output_format`."""
    if output_format == "yolo_cxcywh_scores":
        return decode_yolo(raw, score_threshold, iou_threshold)
    if output_format == "xyxy_score_class":
        return decode_boxes(raw, score_threshold, iou_threshold)
    raise ValueError(f"unknown output format {output_format!r}")
