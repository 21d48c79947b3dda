"""The hotspot: the square window of 10 high-power fields' area holding the most mitoses.

Pathologists count in the most active area; the window has the area of 10 HPF (2.376 mm² for a
0.55 mm field) and slides over the slide in steps of 1/20 of its side. Ties go to the window
with more tissue, then to the first in reading order. A slide smaller than the window gets a
window clipped to the slide, and the result says how much tissue it really covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from services.aggregator.grading import HOTSPOT_FIELDS, field_area_mm2
from services.aggregator.merge import SlideDetection
from services.tiler.tissue import TissueMask

STEPS_PER_WINDOW = 20


@dataclass(frozen=True)
class Hotspot:
    x_px: float  # top-left, level-0 pixels
    y_px: float
    width_px: float
    height_px: float
    count: int
    window_area_mm2: float
    tissue_area_mm2: float
    fields: int
    field_diameter_mm: float

    @property
    def count_per_mm2(self) -> float:
        return self.count / self.window_area_mm2 if self.window_area_mm2 > 0 else 0.0


def _window_sums(grid: np.ndarray, kx: int, ky: int) -> np.ndarray:
    integral = np.pad(grid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return integral[ky:, kx:] - integral[:-ky, kx:] - integral[ky:, :-kx] + integral[:-ky, :-kx]


def find_hotspot(
    detections: list[SlideDetection],
    slide_width_px: int,
    slide_height_px: int,
    mpp_um_per_px: float,
    tissue: TissueMask,
    field_diameter_mm: float,
    fields: int = HOTSPOT_FIELDS,
) -> Hotspot:
    side_mm = math.sqrt(fields * field_area_mm2(field_diameter_mm))
    side_px = side_mm * 1000.0 / mpp_um_per_px
    step_px = side_px / STEPS_PER_WINDOW
    nx, ny = max(1, math.ceil(slide_width_px / step_px)), max(1, math.ceil(slide_height_px / step_px))
    counts = np.zeros((ny, nx), np.int64)
    for det in detections:
        ix = min(int(det.x_px // step_px), nx - 1)
        iy = min(int(det.y_px // step_px), ny - 1)
        counts[iy, ix] += 1
    # Tissue area (mm²) per grid cell, from the mask resampled onto the same grid.
    mask = tissue.mask.astype(np.float32)
    mask_cell_px = step_px / tissue.level0_px_per_mask_px
    padded = np.zeros((math.ceil(ny * mask_cell_px), math.ceil(nx * mask_cell_px)), np.float32)
    h, w = min(mask.shape[0], padded.shape[0]), min(mask.shape[1], padded.shape[1])
    padded[:h, :w] = mask[:h, :w]
    tissue_fraction = cv2.resize(padded, (nx, ny), interpolation=cv2.INTER_AREA)
    tissue_cells_mm2 = tissue_fraction.astype(np.float64) * (step_px * mpp_um_per_px / 1000.0) ** 2

    kx, ky = min(STEPS_PER_WINDOW, nx), min(STEPS_PER_WINDOW, ny)
    count_windows = _window_sums(counts, kx, ky)
    tissue_windows = _window_sums(tissue_cells_mm2, kx, ky)
    # Lexicographic: most mitoses, then most tissue; argmax returns the first in reading order.
    best_count = count_windows.max()
    candidates = np.where(count_windows == best_count, tissue_windows, -1.0)
    iy, ix = np.unravel_index(int(np.argmax(candidates)), candidates.shape)
    x0, y0 = ix * step_px, iy * step_px
    width = min(kx * step_px, slide_width_px - x0) if kx < STEPS_PER_WINDOW else kx * step_px
    height = min(ky * step_px, slide_height_px - y0) if ky < STEPS_PER_WINDOW else ky * step_px
    width, height = min(width, slide_width_px), min(height, slide_height_px)
    return Hotspot(
        x_px=float(x0), y_px=float(y0), width_px=float(width), height_px=float(height),
        count=int(best_count),
        window_area_mm2=float(width * height * (mpp_um_per_px / 1000.0) ** 2),
        tissue_area_mm2=float(tissue_windows[iy, ix]),
        fields=fields, field_diameter_mm=field_diameter_mm,
    )
