"""Square image cells packed row by row onto one white model-sized tile, and detections split back.

Small crops (AMi-Br's 128 px, the dataset's 256 px images) are evaluated or trained at the
model's 512 px input by packing several per tile, which keeps their scale native.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def pack(cells: Sequence[npt.NDArray[np.uint8]], tile_px: int) -> tuple[npt.NDArray[np.uint8], list[tuple[int, int]]]:
    """Place equal square cells row by row on a white tile; returns it and each cell's (x, y) offset."""
    cell_px = cells[0].shape[0]
    per_row = tile_px // cell_px
    if len(cells) > per_row * per_row:
        raise ValueError(f"{len(cells)} cells of {cell_px} px do not fit a {tile_px} px tile")
    tile = np.full((tile_px, tile_px, 3), 255, np.uint8)
    offsets = []
    for k, cell in enumerate(cells):
        x, y = (k % per_row) * cell_px, (k // per_row) * cell_px
        tile[y : y + cell_px, x : x + cell_px] = cell
        offsets.append((x, y))
    return tile, offsets


def split(
    boxes_px: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], offsets: Sequence[tuple[int, int]], cell_px: int
) -> list[list[tuple[float, float, float]]]:
    """Detection centres (x, y, score) per cell, in that cell's pixels; a box belongs to the cell of its centre."""
    per_cell: list[list[tuple[float, float, float]]] = [[] for _ in offsets]
    for box, score in zip(boxes_px, scores, strict=True):
        cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
        for k, (x, y) in enumerate(offsets):
            if x <= cx < x + cell_px and y <= cy < y + cell_px:
                per_cell[k].append((cx - x, cy - y, float(score)))
                break
    return per_cell
