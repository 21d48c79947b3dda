"""The tile grid: 512 px tiles at the model's resolution, overlapping, over tissue only.

Tiles live in "model space": the slide resampled to the model's MPP. Tile (row, col) starts at
(col * stride_px, row * stride_px) in model space; `level0_px_per_tile_px` maps back to level 0.
The overlap is wider than any mitosis, so a figure cut by one tile's edge is whole in its
neighbour; the aggregator lets each tile own only its core so a figure is counted once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.common.options import DEFAULT_OVERLAP_PX
from services.tiler.tissue import TissueMask

DEFAULT_TILE_PX = 512
DEFAULT_MIN_TISSUE_FRACTION = 0.0  # any tissue: a tile touching tissue is read


@dataclass(frozen=True)
class Tile:
    index: int
    row: int
    col: int
    x_px: int  # top-left in model space
    y_px: int

    def level0_origin(self, level0_px_per_tile_px: float) -> tuple[float, float]:
        return self.x_px * level0_px_per_tile_px, self.y_px * level0_px_per_tile_px


@dataclass(frozen=True)
class TilePlan:
    slide_width_px: int
    slide_height_px: int
    slide_mpp_um_per_px: float
    model_mpp_um_per_px: float
    tile_px: int
    overlap_px: int
    rows: int
    cols: int
    tiles: tuple[Tile, ...]
    tissue_area_mm2: float

    @property
    def stride_px(self) -> int:
        return self.tile_px - self.overlap_px

    @property
    def level0_px_per_tile_px(self) -> float:
        return self.model_mpp_um_per_px / self.slide_mpp_um_per_px


def plan_tiles(
    slide_width_px: int,
    slide_height_px: int,
    slide_mpp_um_per_px: float,
    tissue: TissueMask,
    model_mpp_um_per_px: float = 0.25,
    tile_px: int = DEFAULT_TILE_PX,
    overlap_px: int = DEFAULT_OVERLAP_PX,
    min_tissue_fraction: float = DEFAULT_MIN_TISSUE_FRACTION,
) -> TilePlan:
    """Lay the grid over the whole slide and keep the tiles whose footprint holds tissue."""
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"overlap {overlap_px} px must be in [0, tile size {tile_px} px)")
    scale = model_mpp_um_per_px / slide_mpp_um_per_px  # level-0 px per model px
    width_model = slide_width_px / scale
    height_model = slide_height_px / scale
    stride = tile_px - overlap_px
    cols = max(1, math.ceil((width_model - overlap_px) / stride))
    rows = max(1, math.ceil((height_model - overlap_px) / stride))

    mask = tissue.mask
    mask_per_model = scale / tissue.level0_px_per_mask_px  # mask px per model px
    # Integral image: the tissue fraction of any footprint in O(1).
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tiles: list[Tile] = []
    for row in range(rows):
        for col in range(cols):
            x, y = col * stride, row * stride
            mx0 = int(np.clip(math.floor(x * mask_per_model), 0, mask.shape[1]))
            my0 = int(np.clip(math.floor(y * mask_per_model), 0, mask.shape[0]))
            mx1 = int(np.clip(math.ceil((x + tile_px) * mask_per_model), 0, mask.shape[1]))
            my1 = int(np.clip(math.ceil((y + tile_px) * mask_per_model), 0, mask.shape[0]))
            area = max((mx1 - mx0) * (my1 - my0), 1)
            inside = integral[my1, mx1] - integral[my0, mx1] - integral[my1, mx0] + integral[my0, mx0]
            if inside > 0 and inside / area >= min_tissue_fraction:
                tiles.append(Tile(len(tiles), row, col, x, y))
    return TilePlan(
        slide_width_px=slide_width_px,
        slide_height_px=slide_height_px,
        slide_mpp_um_per_px=slide_mpp_um_per_px,
        model_mpp_um_per_px=model_mpp_um_per_px,
        tile_px=tile_px,
        overlap_px=overlap_px,
        rows=rows,
        cols=cols,
        tiles=tuple(tiles),
        tissue_area_mm2=tissue.area_mm2,
    )
