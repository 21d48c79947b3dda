"""Tile detections to slide detections, each mitosis counted once.

Two rules, in order:
1. ownership: a tile keeps only detections whose centre lies in its core (the tile minus half
   the overlap on each side that has a neighbouring tile in the plan), widened by the merge
   radius so a figure whose centre estimate differs slightly between two tiles is never
   dropped by both;
2. clustering: detections closer than 7.5 µm (the MIDOG match radius) are one figure; the
   highest-scoring one stands for the cluster, so a figure kept by two widened cores counts
   once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.common.options import DEFAULT_MERGE_RADIUS_UM
from services.detector.postprocess import TileDetections
from services.tiler.grid import Tile, TilePlan

MITOSIS_CLASS = "mitosis"
ATYPICAL_CLASS = "atypical_mitosis"  # a mitosis the second stage calls atypical
MITOTIC_CLASSES = (MITOSIS_CLASS, ATYPICAL_CLASS)


@dataclass(frozen=True)
class SlideDetection:
    x_px: float  # centre, level-0 pixels
    y_px: float
    box_px: tuple[float, float, float, float]  # x0, y0, x1, y1 in level-0 pixels
    score: float
    class_name: str
    tile_index: int
    mitosis_probability: float | None = None  # from the second stage, when there is one
    atypical_probability: float | None = None


def owned_bounds(
    plan: TilePlan, tile: Tile, occupied: set[tuple[int, int]], margin_px: float = 0.0
) -> tuple[float, float, float, float]:
    """The core of `tile` in tile pixels, widened by `margin_px`; a side without a planned
    neighbour is unbounded."""
    inner = plan.overlap_px / 2 - margin_px
    x0 = inner if (tile.row, tile.col - 1) in occupied else -math.inf
    y0 = inner if (tile.row - 1, tile.col) in occupied else -math.inf
    x1 = plan.tile_px - inner if (tile.row, tile.col + 1) in occupied else math.inf
    y1 = plan.tile_px - inner if (tile.row + 1, tile.col) in occupied else math.inf
    return x0, y0, x1, y1


def to_slide_detections(
    plan: TilePlan,
    tile: Tile,
    detections: TileDetections,
    class_names: tuple[str, ...],
    occupied: set[tuple[int, int]],
    margin_px: float,
) -> list[SlideDetection]:
    scale = plan.level0_px_per_tile_px
    origin_x, origin_y = tile.level0_origin(scale)
    bx0, by0, bx1, by1 = owned_bounds(plan, tile, occupied, margin_px)
    out = []
    for i, (box, score, class_id) in enumerate(
        zip(detections.boxes_px, detections.scores, detections.class_ids, strict=True)
    ):
        cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
        if not (bx0 <= cx < bx1 and by0 <= cy < by1):
            continue
        out.append(
            SlideDetection(
                x_px=origin_x + cx * scale,
                y_px=origin_y + cy * scale,
                box_px=tuple(
                    float(v)
                    for v in (
                        origin_x + box[0] * scale,
                        origin_y + box[1] * scale,
                        origin_x + box[2] * scale,
                        origin_y + box[3] * scale,
                    )
                ),  # type: ignore[arg-type]
                score=float(score),
                class_name=class_names[int(class_id)],
                tile_index=tile.index,
                mitosis_probability=_optional(detections.mitosis_probabilities, i),
                atypical_probability=_optional(detections.atypical_probabilities, i),
            )
        )
    return out


def _optional(values: npt.NDArray[np.float32] | None, i: int) -> float | None:
    return None if values is None else float(values[i])


def _rank(d: SlideDetection) -> float:
    return d.score if d.mitosis_probability is None else d.mitosis_probability


def cluster_detections(detections: list[SlideDetection], radius_px: float) -> list[SlideDetection]:
    """Greedy by score: keep a detection unless a kept one lies within `radius_px`."""
    cell = max(radius_px, 1e-6)
    grid: dict[tuple[int, int], list[SlideDetection]] = defaultdict(list)
    kept: list[SlideDetection] = []
    # With a second stage its probability ranks the figures; the detector score otherwise.
    for det in sorted(detections, key=lambda d: (-_rank(d), d.y_px, d.x_px)):
        gx, gy = int(det.x_px // cell), int(det.y_px // cell)
        near = (other for dx in (-1, 0, 1) for dy in (-1, 0, 1) for other in grid[(gx + dx, gy + dy)])
        if any((o.x_px - det.x_px) ** 2 + (o.y_px - det.y_px) ** 2 <= radius_px**2 for o in near):
            continue
        grid[(gx, gy)].append(det)
        kept.append(det)
    return sorted(kept, key=lambda d: (d.y_px, d.x_px))


def merge_tile_detections(
    plan: TilePlan,
    per_tile: dict[int, TileDetections],
    class_names: tuple[str, ...],
    radius_um: float = DEFAULT_MERGE_RADIUS_UM,
) -> list[SlideDetection]:
    occupied = {(t.row, t.col) for t in plan.tiles}
    margin_px = radius_um / plan.model_mpp_um_per_px
    candidates: list[SlideDetection] = []
    for tile in plan.tiles:
        detections = per_tile.get(tile.index)
        if detections is not None and len(detections):
            candidates += to_slide_detections(plan, tile, detections, class_names, occupied, margin_px)
    return cluster_detections(candidates, radius_um / plan.slide_mpp_um_per_px)
