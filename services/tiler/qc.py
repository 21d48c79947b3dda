"""Slide quality control: refuse what is not brightfield H&E, drop tiles not worth scoring.

Slide-level refusals, judged on the overview that planning reads anyway (no extra I/O):

* `check_colours`: a dark background is a fluorescence scan (`NotBrightfieldError`); glass that
  is not near-white and colourless means the colours were decoded wrongly, e.g. DICOM JPEG frames
  holding YCbCr while the header says RGB (`ImplausibleColoursError`).
* `check_stain`: tissue mostly brown or yellow-orange rather than pink-purple is IHC/DAB
  (`NotHematoxylinEosinError`).

Tile-level exclusions, reported in `SlideQc` rather than refused:

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
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from services.tiler.errors import ImplausibleColoursError, NotBrightfieldError, NotHematoxylinEosinError
from services.tiler.grid import Tile, TilePlan
from services.tiler.slide import Slide
from services.tiler.tissue import TissueMask

ExclusionReason = Literal["blur", "pen"]

# Colours, on the overview; Lab L* and chroma on their usual 0-100 scale.
DARK_LIGHTNESS = 25.0  # darker than any brightfield glass or H&E tissue at overview scale
MAX_DARK_FRACTION = 0.5  # fluorescence: most of the slide is black
GLASS_PERCENTILE = 95.0  # the brightest 5 % of the overview stand for the glass
MIN_BRIGHTFIELD_GLASS_LIGHTNESS = 40.0  # below: even the brightest pixels are dark
MIN_GLASS_LIGHTNESS = 60.0  # brightfield glass is L* 85-100 (CMU-1: 97)
MAX_GLASS_CHROMA = 12.0  # glass is grey within a few units (CMU-1: 1.4); YCbCr read as RGB: 18-47

# Stain, on tissue pixels of the overview; hue in degrees.
STAIN_MIN_SATURATION = 30  # of 255: below it hue is noise
BROWN_HUE_DEG = (10.0, 70.0)  # DAB brown through yellow-orange
PINK_PURPLE_MIN_HUE_DEG = 250.0  # hematoxylin purple through eosin pink to red ...
PINK_PURPLE_MAX_HUE_DEG = 10.0  # ... wrapping past 0°
MAX_BROWN_FRACTION = 0.25  # refuse above this share of brown tissue if brown outweighs pink-purple

# Pen, on the ~8 µm/px overview.
PEN_GREEN_HUE_DEG = (70.0, 200.0)  # green to cyan: no H&E dye comes near
PEN_GREEN_MIN_SATURATION = 60
PEN_BLUE_HUE_DEG = (200.0, 250.0)  # blue ink, also over tissue (~240°); hematoxylin is 250-300°
PEN_BLUE_MIN_SATURATION = 115
PEN_BLACK_MAX_VALUE = 50  # of 255; the darkest H&E tissue at 8 µm/px is ~65 (CMU-1 1st percentile)
PEN_MIN_COMPONENT_MM2 = 0.01  # ink strokes are mm long; dust and dye specks are far smaller
PEN_MARGIN_UM = 40.0  # the ink's soft edge
PEN_MAX_TILE_FRACTION = 0.5  # a tile more than half under ink is dropped

# Focus, per tile at a mid resolution.
FOCUS_MPP_UM_PER_PX = 2.0
FOCUS_MIN_LAPLACIAN_VAR = 150.0  # sharp tissue: synthetic >= 480, CMU-1 >= 2800; blur σ 3 µm < 80
FOCUS_TISSUE_MIN_SATURATION = 25
FOCUS_MIN_TISSUE_FRACTION = 0.1  # a sliver of tissue is too little to judge: the tile is kept
FOCUS_MAX_READ_PX = 8192  # widest strip read at once, in level pixels


@dataclass(frozen=True)
class ColourMeasures:
    glass_lightness: float  # median L* of the brightest pixels
    glass_chroma: float  # Lab chroma of their median colour
    dark_fraction: float  # share of the scanned overview darker than DARK_LIGHTNESS


@dataclass(frozen=True)
class StainMeasures:
    brown_fraction: float  # share of saturated tissue pixels with a brown/yellow-orange hue
    pink_purple_fraction: float  # share with the hues of hematoxylin and eosin


@dataclass(frozen=True)
class FocusMeasures:
    read_mpp_um_per_px: float | None  # None when the slide is too coarse to judge focus
    tiles_judged: int  # tiles with enough tissue to judge
    tiles_in_focus: int  # of those, the ones kept
    laplacian_var_min: float | None  # over the judged tiles, before exclusion
    laplacian_var_median: float | None


@dataclass(frozen=True)
class ExcludedTile:
    row: int
    col: int
    x_px: int  # top-left in model space, as `Tile`
    y_px: int
    reason: ExclusionReason
    box_level0_px: tuple[float, float, float, float]  # x0, y0, x1, y1 of the tile on the slide


@dataclass(frozen=True)
class SlideQc:
    colours: ColourMeasures
    stain: StainMeasures
    focus: FocusMeasures
    excluded_tiles: tuple[ExcludedTile, ...]
    blur_area_mm2: float  # tissue that would have been scored, dropped as out of focus
    pen_area_mm2: float  # ink, and tissue in tiles dropped for ink

    @property
    def excluded_area_mm2(self) -> float:
        return self.blur_area_mm2 + self.pen_area_mm2

    def tiles_excluded_for(self, reason: ExclusionReason) -> tuple[ExcludedTile, ...]:
        return tuple(t for t in self.excluded_tiles if t.reason == reason)

    def to_dict(self) -> dict[str, object]:
        excluded: list[dict[str, object]] = []
        areas_mm2: dict[ExclusionReason, float] = {"blur": self.blur_area_mm2, "pen": self.pen_area_mm2}
        for reason, area_mm2 in areas_mm2.items():
            tiles = self.tiles_excluded_for(reason)
            if tiles or area_mm2 > 0:
                excluded.append(
                    {
                        "reason": reason,
                        "area_mm2": round(area_mm2, 4),
                        "tiles": len(tiles),
                        "tile_rows_cols": [[t.row, t.col] for t in tiles],
                        "boxes_level0_px": [[round(v, 1) for v in t.box_level0_px] for t in tiles],
                    }
                )
        return {
            "verdict": "ok",
            "checks": {
                "glass_lightness": round(self.colours.glass_lightness, 2),
                "glass_chroma": round(self.colours.glass_chroma, 2),
                "dark_fraction": round(self.colours.dark_fraction, 4),
                "brown_fraction": round(self.stain.brown_fraction, 4),
                "pink_purple_fraction": round(self.stain.pink_purple_fraction, 4),
                "focus_read_mpp_um_per_px": self.focus.read_mpp_um_per_px,
                "focus_tiles_judged": self.focus.tiles_judged,
                "focus_tiles_in_focus": self.focus.tiles_in_focus,
                "focus_laplacian_var_min": _rounded(self.focus.laplacian_var_min),
                "focus_laplacian_var_median": _rounded(self.focus.laplacian_var_median),
            },
            "thresholds": {
                "max_dark_fraction": MAX_DARK_FRACTION,
                "min_glass_lightness": MIN_GLASS_LIGHTNESS,
                "max_glass_chroma": MAX_GLASS_CHROMA,
                "max_brown_fraction": MAX_BROWN_FRACTION,
                "focus_min_laplacian_var": FOCUS_MIN_LAPLACIAN_VAR,
                "pen_max_tile_fraction": PEN_MAX_TILE_FRACTION,
            },
            "excluded": excluded,
            "excluded_area_mm2": round(self.excluded_area_mm2, 4),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _lab(rgb: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """L* (0-100) and (a*, b*) of 8-bit RGB pixels, shape (..., 3)."""
    lab = cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return lab[:, 0] * (100.0 / 255.0), lab[:, 1:] - 128.0


def check_colours(overview_rgb: npt.NDArray[np.uint8], slide_name: str) -> ColourMeasures:
    """Refuse a dark background (fluorescence), then glass that is not near-white and grey."""
    pixels = overview_rgb.reshape(-1, 3)
    # Unscanned areas come back as pure white fill; judge the darkness of what was scanned.
    scanned = pixels[(pixels < 255).any(axis=1)]
    if len(scanned) < 0.05 * len(pixels):
        scanned = pixels
    lightness, ab = _lab(scanned)
    dark_fraction = float((lightness < DARK_LIGHTNESS).mean())
    bright = lightness >= np.percentile(lightness, GLASS_PERCENTILE)
    glass_lightness = float(np.median(lightness[bright]))
    glass_chroma = float(np.hypot(*np.median(ab[bright], axis=0)))
    measures = ColourMeasures(glass_lightness, glass_chroma, dark_fraction)
    if dark_fraction > MAX_DARK_FRACTION or glass_lightness < MIN_BRIGHTFIELD_GLASS_LIGHTNESS:
        raise NotBrightfieldError(
            f"{slide_name}: the background is dark ({dark_fraction:.0%} of the slide darker than "
            f"L* {DARK_LIGHTNESS:.0f}, brightest pixels L* {glass_lightness:.0f} of 100); this looks like a "
            "fluorescence scan. mitoscope scores brightfield H&E slides: send the brightfield H&E scan"
        )
    if glass_lightness < MIN_GLASS_LIGHTNESS or glass_chroma > MAX_GLASS_CHROMA:
        raise ImplausibleColoursError(
            f"{slide_name}: the glass is not near-white (brightest pixels L* {glass_lightness:.0f}, chroma "
            f"{glass_chroma:.0f}; expected L* >= {MIN_GLASS_LIGHTNESS:.0f} and chroma <= {MAX_GLASS_CHROMA:.0f}); "
            "the colours were probably decoded wrongly (e.g. DICOM JPEG frames stored as YCbCr while the "
            "header says RGB) or the scan is badly exposed: re-export the slide from the scanner"
        )
    return measures


def check_stain(rgb: npt.NDArray[np.uint8], tissue_mask: npt.NDArray[np.bool_], slide_name: str) -> StainMeasures:
    """Refuse tissue that is mostly brown (IHC/DAB) rather than pink-purple (H&E)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[tissue_mask]
    hue_deg = hsv[:, 0].astype(np.float32) * 2.0
    hue_deg = hue_deg[hsv[:, 1] >= STAIN_MIN_SATURATION]
    if hue_deg.size == 0:
        return StainMeasures(0.0, 0.0)
    brown = float(_in_range(hue_deg, BROWN_HUE_DEG).mean())
    pink_purple = float(((hue_deg >= PINK_PURPLE_MIN_HUE_DEG) | (hue_deg < PINK_PURPLE_MAX_HUE_DEG)).mean())
    if brown > MAX_BROWN_FRACTION and brown > pink_purple:
        raise NotHematoxylinEosinError(
            f"{slide_name}: {brown:.0%} of the tissue is brown or yellow-orange and only {pink_purple:.0%} "
            "pink-purple; this looks like an immunohistochemistry (DAB) slide. mitoscope counts mitoses "
            "on H&E: send the H&E slide of this case"
        )
    return StainMeasures(brown, pink_purple)


def _in_range(hue_deg: npt.NDArray[np.float32], bounds: tuple[float, float]) -> npt.NDArray[np.bool_]:
    return (hue_deg >= bounds[0]) & (hue_deg < bounds[1])


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
