"""Tissue detection on a low-resolution overview: saturation, Otsu, morphology.

Glass is bright and colourless; stained tissue is saturated. Otsu picks the split on the
saturation histogram, with a floor so a slide that is nearly all tissue or all glass does not
make noise into tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

MASK_MPP_UM_PER_PX = 8.0
MIN_SATURATION = 18
MIN_TISSUE_COMPONENT_MM2 = 0.005
MASK_MIN_SIDE_PX = 64
MASK_MAX_SIDE_PX = 4096


@dataclass(frozen=True)
class TissueMask:
    mask: npt.NDArray[np.bool_]
    level0_px_per_mask_px: float  # level-0 pixels per mask pixel (the same on both axes)
    mpp_um_per_px: float  # of the slide's level 0

    @property
    def area_mm2(self) -> float:
        mask_um = self.level0_px_per_mask_px * self.mpp_um_per_px
        return float(self.mask.sum()) * (mask_um / 1000.0) ** 2


def overview_side_px(width_px: int, height_px: int, mpp_um_per_px: float) -> int:
    side = int(np.ceil(max(width_px, height_px) * mpp_um_per_px / MASK_MPP_UM_PER_PX))
    return int(np.clip(side, MASK_MIN_SIDE_PX, MASK_MAX_SIDE_PX))


def detect_tissue(
    overview_rgb: npt.NDArray[np.uint8], level0_px_per_mask_px: float, mpp_um_per_px: float
) -> TissueMask:
    hsv = cv2.cvtColor(overview_rgb, cv2.COLOR_RGB2HSV)
    saturation = cv2.GaussianBlur(hsv[..., 1], (5, 5), 0)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > max(otsu, MIN_SATURATION)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask_px_mm2 = (level0_px_per_mask_px * mpp_um_per_px / 1000.0) ** 2
    min_pixels = MIN_TISSUE_COMPONENT_MM2 / mask_px_mm2
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return TissueMask(keep[labels], level0_px_per_mask_px, mpp_um_per_px)
