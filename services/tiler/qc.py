"""Slide quality control: refuse what is not brightfield H&E; the QC report and its thresholds.

Slide-level refusals, judged on the overview that planning reads anyway (no extra I/O):

* `check_colours`: a dark background is a fluorescence scan (`NotBrightfieldError`); glass that
  is not near-white and colourless means the colours were decoded wrongly, e.g. DICOM JPEG frames
  holding YCbCr while the header says RGB (`ImplausibleColoursError`).
* `check_stain`: tissue mostly brown or yellow-orange rather than pink-purple is IHC/DAB
  (`NotHematoxylinEosinError`).

Tiles not worth scoring (pen, blur) are dropped by `services.tiler.exclusions`; every threshold of
both lives here, and `SlideQc` is the report both write into the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from services.tiler.errors import ImplausibleColoursError, NotBrightfieldError, NotHematoxylinEosinError

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
    all_lightness, all_ab = _lab(pixels)
    # Unscanned areas come back as pure white fill; judge the darkness of what was scanned.
    scanned = (pixels < 255).any(axis=1)
    lightness = all_lightness[scanned] if scanned.sum() >= 0.05 * len(pixels) else all_lightness
    dark_fraction = float((lightness < DARK_LIGHTNESS).mean())
    scanned_glass_lightness = float(np.median(lightness[lightness >= np.percentile(lightness, GLASS_PERCENTILE)]))
    # The glass itself, pure-white pixels included: scanners that clip the background to 255 show
    # glass as exactly that, and leaving it out would judge pale tissue as the glass.
    bright = all_lightness >= np.percentile(all_lightness, GLASS_PERCENTILE)
    glass_lightness = float(np.median(all_lightness[bright]))
    glass_chroma = float(np.hypot(*np.median(all_ab[bright], axis=0)))
    measures = ColourMeasures(glass_lightness, glass_chroma, dark_fraction)
    if dark_fraction > MAX_DARK_FRACTION or scanned_glass_lightness < MIN_BRIGHTFIELD_GLASS_LIGHTNESS:
        raise NotBrightfieldError(
            f"{slide_name}: the background is dark ({dark_fraction:.0%} of the slide darker than "
            f"L* {DARK_LIGHTNESS:.0f}, brightest pixels L* {scanned_glass_lightness:.0f} of 100); this looks like a "
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
    brown = float(in_hue_range(hue_deg, BROWN_HUE_DEG).mean())
    pink_purple = float(((hue_deg >= PINK_PURPLE_MIN_HUE_DEG) | (hue_deg < PINK_PURPLE_MAX_HUE_DEG)).mean())
    if brown > MAX_BROWN_FRACTION and brown > pink_purple:
        raise NotHematoxylinEosinError(
            f"{slide_name}: {brown:.0%} of the tissue is brown or yellow-orange and only {pink_purple:.0%} "
            "pink-purple; this looks like an immunohistochemistry (DAB) slide. mitoscope counts mitoses "
            "on H&E: send the H&E slide of this case"
        )
    return StainMeasures(brown, pink_purple)


def in_hue_range(hue_deg: npt.NDArray[np.float32], bounds: tuple[float, float]) -> npt.NDArray[np.bool_]:
    return (hue_deg >= bounds[0]) & (hue_deg < bounds[1])
