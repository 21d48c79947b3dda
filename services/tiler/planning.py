"""From an open slide to its tissue mask and tile plan: the tiler's whole preparation step."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from services.tiler.errors import SlideError
from services.tiler.grid import TilePlan, plan_tiles
from services.tiler.slide import Slide
from services.tiler.tissue import TissueMask, detect_tissue, overview_side_px

OVERVIEW_MAX_SIDE_PX = 2048


class NoTissueError(SlideError):
    """Tissue detection found nothing to score."""


@dataclass(frozen=True)
class SlidePlan:
    tissue: TissueMask
    plan: TilePlan
    overview: npt.NDArray[np.uint8]  # the whole slide, longer side up to OVERVIEW_MAX_SIDE_PX, for pictures


def plan_slide(
    slide: Slide, mpp_um_per_px: float, model_mpp_um_per_px: float, tile_px: int, overlap_px: int
) -> SlidePlan:
    """Read one overview, find tissue on a copy scaled to ~8 µm/px, lay the tile grid over it."""
    info = slide.info
    mask_side = overview_side_px(info.width_px, info.height_px, mpp_um_per_px)
    overview = slide.thumbnail(max(mask_side, min(OVERVIEW_MAX_SIDE_PX, max(info.width_px, info.height_px))))
    small = overview
    if max(overview.shape[:2]) > mask_side:
        factor = mask_side / max(overview.shape[:2])
        size = (max(1, round(overview.shape[1] * factor)), max(1, round(overview.shape[0] * factor)))
        small = cv2.resize(overview, size, interpolation=cv2.INTER_AREA)
    tissue = detect_tissue(small, info.width_px / small.shape[1], mpp_um_per_px)
    plan = plan_tiles(
        info.width_px,
        info.height_px,
        mpp_um_per_px,
        tissue,
        model_mpp_um_per_px=model_mpp_um_per_px,
        tile_px=tile_px,
        overlap_px=overlap_px,
    )
    if not plan.tiles:
        raise NoTissueError(f"{info.path.name}: no tissue found on the slide; nothing to score")
    return SlidePlan(tissue, plan, overview)
