"""The hotspot: the square window of 10 high-power fields' area holding the most mitoses.

Pathologists count in the most active area; the window has the area of 10 HPF (2.376 mm² for a
0.55 mm field) and slides over the slide in steps of 1/20 of its side. Ties go to the window
with more tissue, then to the first in reading order. A slide smaller than the window gets a
window clipped to the slide, and the result says how much tissue it really covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    # Tissue area (mm²) per grid cell: each mask pixel adds its area to the cell holding its centre.
    ys, xs = np.nonzero(tissue.mask)
    cell_x = np.minimum(((xs + 0.5) * tissue.level0_px_per_mask_px // step_px).astype(np.int64), nx - 1)
    cell_y = np.minimum(((ys + 0.5) * tissue.level0_px_per_mask_px // step_px).astype(np.int64), ny - 1)
    tissue_cells_mm2 = np.zeros((ny, nx), np.float64)
    np.add.at(tissue_cells_mm2, (cell_y, cell_x), (tissue.level0_px_per_mask_px * mpp_um_per_px / 1000.0) ** 2)

    kx, ky = min(STEPS_PER_WINDOW, nx), min(STEPS_PER_WINDOW, ny)
    count_windows = _window_sums(counts, kx, ky)
    tissue_windows = _window_sums(tissue_cells_mm2, kx, ky)
    # Lexicographic: most mitoses, then most tissue; argmax returns the first in reading order.
    best_count = count_windows.max()
    candidates = np.where(count_windows == best_count, tissue_windows, -1.0)
    iy, ix = (int(i) for i in np.unravel_index(int(np.argmax(candidates)), candidates.shape))
    x0, y0 = ix * step_px, iy * step_px
    # Clipped to the slide: a window over the slide's edge covers less, and says so in its area.
    width = min(kx * step_px, slide_width_px - x0)
    height = min(ky * step_px, slide_height_px - y0)
    return Hotspot(
        x_px=float(x0),
        y_px=float(y0),
        width_px=float(width),
        height_px=float(height),
        count=int(best_count),
        window_area_mm2=float(width * height * (mpp_um_per_px / 1000.0) ** 2),
        tissue_area_mm2=float(tissue_windows[iy, ix]),
        fields=fields,
        field_diameter_mm=field_diameter_mm,
    )
