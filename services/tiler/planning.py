"""From an open slide to its tissue mask and tile plan: the tiler's whole preparation step.

Quality control runs here too: the slide-level checks (`services.tiler.qc`) refuse a slide before
any tile is read, and pen and out-of-focus tiles leave the plan (`services.tiler.exclusions`),
reported in `SlidePlan.qc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from services.tiler.errors import NoTissueError
from services.tiler.exclusions import exclude_tiles, find_pen_marks
from services.tiler.grid import TilePlan, plan_tiles
from services.tiler.qc import SlideQc, check_colours, check_stain
from services.tiler.slide import Slide
from services.tiler.tissue import TissueMask, detect_tissue, overview_side_px

__all__ = ["OVERVIEW_MAX_SIDE_PX", "NoTissueError", "SlidePlan", "plan_slide"]  # NoTissueError: re-exported

OVERVIEW_MAX_SIDE_PX = 2048


@dataclass(frozen=True)
class SlidePlan:
    tissue: TissueMask  # the tissue that is scored: ink and excluded tiles removed
    plan: TilePlan
    overview: npt.NDArray[np.uint8]  # the whole slide, longer side up to OVERVIEW_MAX_SIDE_PX, for pictures
    qc: SlideQc


def plan_slide(
    slide: Slide, mpp_um_per_px: float, model_mpp_um_per_px: float, tile_px: int, overlap_px: int
) -> SlidePlan:
    """Read one overview, check it, find tissue on a copy scaled to ~8 µm/px, lay the tile grid
    over it and drop the tiles QC excludes."""
    info = slide.info
    name = info.path.name
    mask_side = overview_side_px(info.width_px, info.height_px, mpp_um_per_px)
    overview = slide.thumbnail(max(mask_side, min(OVERVIEW_MAX_SIDE_PX, max(info.width_px, info.height_px))))
    colours = check_colours(overview, name)
    small = overview
    if max(overview.shape[:2]) > mask_side:
        factor = mask_side / max(overview.shape[:2])
        size = (max(1, round(overview.shape[1] * factor)), max(1, round(overview.shape[0] * factor)))
        small = cv2.resize(overview, size, interpolation=cv2.INTER_AREA)
    level0_px_per_mask_px = info.width_px / small.shape[1]
    pen = find_pen_marks(small, level0_px_per_mask_px * mpp_um_per_px)
    # Ink painted as glass: it is not tissue, and its saturation would skew the Otsu split.
    tissue = detect_tissue(np.where(pen[..., None], np.uint8(255), small), level0_px_per_mask_px, mpp_um_per_px)
    if not tissue.mask.any():
        ink = " (only pen marks)" if pen.any() else ""
        raise NoTissueError(f"{name}: no tissue found on the slide{ink}; nothing to score")
    stain = check_stain(small, tissue.mask, name)
    grid = plan_tiles(
        info.width_px,
        info.height_px,
        mpp_um_per_px,
        TissueMask(tissue.mask | pen, level0_px_per_mask_px, mpp_um_per_px),
        model_mpp_um_per_px=model_mpp_um_per_px,
        tile_px=tile_px,
        overlap_px=overlap_px,
    )
    plan, scored, qc = exclude_tiles(slide, grid, tissue, pen, colours, stain)
    # Tiles too sparse to judge may survive a slide that is wholly out of focus: not enough to score.
    if not plan.tiles or (qc.focus.tiles_judged > 0 and qc.focus.tiles_in_focus == 0):
        raise NoTissueError(
            f"{name}: no tissue left to score: {len(qc.tiles_excluded_for('blur'))} tiles out of focus, "
            f"{len(qc.tiles_excluded_for('pen'))} under pen marks; rescan the slide in focus, "
            "or clean the ink off the cover glass and rescan"
        )
    return SlidePlan(scored, plan, overview, qc)
