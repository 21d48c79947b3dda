"""Tile-level quality control: tiles under pen ink or out of focus leave the plan, reported.

* pen: ink hues H&E never has (green to cyan, saturated blue, near-black), found on the ~8 µm/px
  overview by `find_pen_marks`. Planning paints ink white before tissue detection, so ink is
  neither tissue nor a weight in the Otsu split.
* blur: the variance of the Laplacian of the grey tile at 2 µm/px (`focus_measure`). Tiles are
  read in strips, one per run of neighbouring tiles in a grid row, from the coarsest level not
  coarser than 2 µm/px (level 1 of a 40x slide with 4x levels: a sixteenth of level 0's pixels).

Design (`exclude_tiles`): the grid is laid once over tissue and ink, i.e. over every tile that
would be read without QC. A tile is "pen" when ink covers more than half of its footprint (or it
holds ink and no tissue), else "blur" when its tissue is out of focus; a tile with too little
tissue to judge its focus is kept. Excluded tiles are dropped and the kept ones renumbered
0..n-1, so `Tile.index` stays the tile's position in `plan.tiles` as the reader, the wire format
and the aggregator expect; row, col and position are unchanged. The tissue mask is cut to the
kept tiles' footprints (and loses the ink), so tissue area, the density denominator and the
hotspot search cover scored tissue only. Excluded tiles are reported by grid row/col (they have
no index: they are not in the plan), and each removed mask pixel is charged to one reason, so
`plan.tissue_area_mm2 + qc.excluded_area_mm2` is the area that would have been scored without QC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from itertools import groupby

import cv2
import numpy as np
import numpy.typing as npt

from services.tiler.grid import Tile, TilePlan
from services.tiler.qc import (
    FOCUS_MAX_READ_PX,
    FOCUS_MIN_LAPLACIAN_VAR,
    FOCUS_MIN_TISSUE_FRACTION,
    FOCUS_MPP_UM_PER_PX,
    FOCUS_TISSUE_MIN_SATURATION,
    PEN_BLACK_MAX_VALUE,
    PEN_BLUE_HUE_DEG,
    PEN_BLUE_MIN_SATURATION,
    PEN_GREEN_HUE_DEG,
    PEN_GREEN_MIN_SATURATION,
    PEN_MARGIN_UM,
    PEN_MAX_TILE_FRACTION,
    PEN_MIN_COMPONENT_MM2,
    ColourMeasures,
    ExcludedTile,
    ExclusionReason,
    FocusMeasures,
    SlideQc,
    StainMeasures,
)
from services.tiler.slide import Slide
from services.tiler.tissue import TissueMask


def find_pen_marks(rgb: npt.NDArray[np.uint8], mask_px_um: float) -> npt.NDArray[np.bool_]:
    """Pixels of ink strokes on an overview whose pixels are `mask_px_um` wide, with a margin."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue_deg = hsv[..., 0].astype(np.float32) * 2.0
    saturation, value = hsv[..., 1], hsv[..., 2]
    green = (
        (hue_deg >= PEN_GREEN_HUE_DEG[0]) & (hue_deg < PEN_GREEN_HUE_DEG[1]) & (saturation >= PEN_GREEN_MIN_SATURATION)
    )
    blue = (hue_deg >= PEN_BLUE_HUE_DEG[0]) & (hue_deg < PEN_BLUE_HUE_DEG[1]) & (saturation >= PEN_BLUE_MIN_SATURATION)
    ink = (green | blue | (value <= PEN_BLACK_MAX_VALUE)).astype(np.uint8)
    ink = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    min_pixels = PEN_MIN_COMPONENT_MM2 / (mask_px_um / 1000.0) ** 2
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    ink = keep[labels].astype(np.uint8)
    radius = math.ceil(PEN_MARGIN_UM / mask_px_um)
    if radius > 0 and ink.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        ink = cv2.dilate(ink, kernel)
    return ink.astype(bool)


def focus_measure(rgb: npt.NDArray[np.uint8]) -> float | None:
    """Variance of the Laplacian of grey over the tissue of a tile at FOCUS_MPP_UM_PER_PX.

    None when the tile holds too little tissue to judge. The tissue is eroded so its boundary
    with the glass (a strong edge even when blurred) does not stand in for detail."""
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    tissue = cv2.erode((saturation > FOCUS_TISSUE_MIN_SATURATION).astype(np.uint8), np.ones((5, 5), np.uint8))
    inside = tissue.astype(bool)
    if inside.sum() < max(FOCUS_MIN_TISSUE_FRACTION * tissue.size, 16):
        return None
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    laplacian = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)
    return float(laplacian[inside].var())


def measure_focus(slide: Slide, plan: TilePlan, tiles: Sequence[Tile]) -> tuple[float | None, dict[int, float]]:
    """The focus read's resolution, and `focus_measure` per tile index for tiles with enough tissue.

    One read per grid row (split where wider than FOCUS_MAX_READ_PX) at the coarsest level not
    coarser than FOCUS_MPP_UM_PER_PX, resampled to exactly that resolution."""
    focus_px_level0 = FOCUS_MPP_UM_PER_PX / plan.slide_mpp_um_per_px  # level-0 px per focus px
    if focus_px_level0 < 1.0 or not tiles:
        return None, {}  # a slide coarser than 2 µm/px shows no focus detail to judge
    level = slide.best_level_for_downsample(focus_px_level0)
    level_downsample = slide.info.level_downsamples[level]
    to_focus = level_downsample / focus_px_level0  # focus px per level px, <= 1.01
    level0_per_model = plan.level0_px_per_tile_px
    footprint_level0 = plan.tile_px * level0_per_model
    footprint_px = max(1, round(footprint_level0 / focus_px_level0))
    values: dict[int, float] = {}
    ordered = sorted(tiles, key=lambda t: (t.row, t.col))
    for _, row_tiles in groupby(ordered, key=lambda t: t.row):
        for chunk in _strips(
            list(row_tiles), FOCUS_MAX_READ_PX * level_downsample - footprint_level0, level0_per_model
        ):
            x0 = chunk[0].x_px * level0_per_model
            y0 = chunk[0].y_px * level0_per_model
            width_level = math.ceil((chunk[-1].x_px * level0_per_model + footprint_level0 - x0) / level_downsample)
            height_level = math.ceil(footprint_level0 / level_downsample)
            strip = slide.read_region(round(x0), round(y0), level, width_level, height_level)
            if abs(to_focus - 1.0) > 0.01:
                size = (max(1, round(width_level * to_focus)), max(1, round(height_level * to_focus)))
                strip = cv2.resize(strip, size, interpolation=cv2.INTER_AREA)
            for tile in chunk:
                left = round((tile.x_px * level0_per_model - x0) / focus_px_level0)
                value = focus_measure(strip[:footprint_px, left : left + footprint_px])
                if value is not None:
                    values[tile.index] = value
    return FOCUS_MPP_UM_PER_PX, values


def _strips(row_tiles: list[Tile], max_span_level0: float, level0_per_model: float) -> list[list[Tile]]:
    """Split one row's tiles (in column order) into runs of neighbours whose origins span at most
    `max_span_level0`, so glass between tissue is not read."""
    strips: list[list[Tile]] = []
    for tile in row_tiles:
        if (
            strips
            and tile.col == strips[-1][-1].col + 1
            and (tile.x_px - strips[-1][0].x_px) * level0_per_model <= max(max_span_level0, 0.0)
        ):
            strips[-1].append(tile)
        else:
            strips.append([tile])
    return strips


def _footprint(tile: Tile, plan: TilePlan, tissue: TissueMask) -> tuple[int, int, int, int]:
    """The tile's footprint in mask pixels (x0, y0, x1, y1), rounded outwards as `plan_tiles` does."""
    mask_per_model = plan.level0_px_per_tile_px / tissue.level0_px_per_mask_px
    height, width = tissue.mask.shape
    x0 = int(np.clip(math.floor(tile.x_px * mask_per_model), 0, width))
    y0 = int(np.clip(math.floor(tile.y_px * mask_per_model), 0, height))
    x1 = int(np.clip(math.ceil((tile.x_px + plan.tile_px) * mask_per_model), 0, width))
    y1 = int(np.clip(math.ceil((tile.y_px + plan.tile_px) * mask_per_model), 0, height))
    return x0, y0, x1, y1


def _box_area(box: tuple[int, int, int, int]) -> int:
    return max((box[2] - box[0]) * (box[3] - box[1]), 1)


def exclude_tiles(
    slide: Slide,
    grid: TilePlan,
    tissue: TissueMask,
    pen: npt.NDArray[np.bool_],
    colours: ColourMeasures,
    stain: StainMeasures,
) -> tuple[TilePlan, TissueMask, SlideQc]:
    """Drop pen and out-of-focus tiles from `grid` (laid over tissue | pen); see the module doc.

    Returns the plan to score (kept tiles renumbered), the tissue mask cut to it, and the report."""
    integral_pen = np.pad(pen.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    integral_tissue = np.pad(tissue.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def inside(integral: npt.NDArray[np.int64], box: tuple[int, int, int, int]) -> int:
        x0, y0, x1, y1 = box
        return int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0])

    reasons: dict[int, ExclusionReason] = {}
    for tile in grid.tiles:
        box = _footprint(tile, grid, tissue)
        ink, tissue_px = inside(integral_pen, box), inside(integral_tissue, box)
        # Ink over most of the footprint, or ink and no tissue at all: nothing worth reading.
        if ink > 0 and (tissue_px == 0 or ink > PEN_MAX_TILE_FRACTION * _box_area(box)):
            reasons[tile.index] = "pen"
    read_mpp, focus = measure_focus(slide, grid, [t for t in grid.tiles if t.index not in reasons])
    for index, value in focus.items():
        if value < FOCUS_MIN_LAPLACIAN_VAR:
            reasons[index] = "blur"
    values = np.asarray(list(focus.values()), np.float64)
    focus_measures = FocusMeasures(
        read_mpp_um_per_px=read_mpp,
        tiles_judged=len(values),
        tiles_in_focus=int((values >= FOCUS_MIN_LAPLACIAN_VAR).sum()),
        laplacian_var_min=float(values.min()) if len(values) else None,
        laplacian_var_median=float(np.median(values)) if len(values) else None,
    )

    kept = [t for t in grid.tiles if t.index not in reasons]
    dropped = [t for t in grid.tiles if t.index in reasons]
    covered = np.zeros_like(tissue.mask)
    for tile in kept:
        x0, y0, x1, y1 = _footprint(tile, grid, tissue)
        covered[y0:y1, x0:x1] = True
    scored = tissue.mask & covered if dropped else tissue.mask
    # Charge every pixel that leaves the mask to one reason: ink is "pen" wherever it lies.
    charged_to_pen = pen.copy()
    for tile in dropped:
        if reasons[tile.index] == "pen":
            x0, y0, x1, y1 = _footprint(tile, grid, tissue)
            charged_to_pen[y0:y1, x0:x1] = True
    removed = (tissue.mask | pen) & ~scored
    mask_px_mm2 = (tissue.level0_px_per_mask_px * tissue.mpp_um_per_px / 1000.0) ** 2
    pen_area_mm2 = float((removed & charged_to_pen).sum()) * mask_px_mm2
    blur_area_mm2 = float((removed & ~charged_to_pen).sum()) * mask_px_mm2

    scored_tissue = TissueMask(scored, tissue.level0_px_per_mask_px, tissue.mpp_um_per_px)
    plan = replace(
        grid,
        tiles=tuple(replace(tile, index=i) for i, tile in enumerate(kept)),
        tissue_area_mm2=scored_tissue.area_mm2,
    )
    scale = grid.level0_px_per_tile_px
    excluded = tuple(
        ExcludedTile(
            t.row,
            t.col,
            t.x_px,
            t.y_px,
            reasons[t.index],
            (t.x_px * scale, t.y_px * scale, (t.x_px + grid.tile_px) * scale, (t.y_px + grid.tile_px) * scale),
        )
        for t in dropped
    )
    qc = SlideQc(colours, stain, focus_measures, excluded, blur_area_mm2, pen_area_mm2)
    return plan, scored_tissue, qc
