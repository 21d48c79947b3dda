"""Read a plan's tiles from a slide in batches, resampled to the model's resolution."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from services.common.options import DEFAULT_BATCH_SIZE
from services.tiler.grid import Tile, TilePlan
from services.tiler.slide import Slide


@dataclass(frozen=True)
class TileBatch:
    tiles: tuple[Tile, ...]
    pixels: npt.NDArray[np.uint8]  # (n, tile_px, tile_px, 3) RGB at the model's MPP


@dataclass(frozen=True)
class ReadGeometry:
    """How one tile is read: which level, what size there, and whether it is resized."""

    level: int
    level_downsample: float
    read_px: int

    @classmethod
    def for_plan(cls, slide: Slide, plan: TilePlan) -> ReadGeometry:
        scale = plan.level0_px_per_tile_px
        level = slide.best_level_for_downsample(scale)
        downsample = slide.info.level_downsamples[level]
        return cls(level, downsample, max(1, math.ceil(plan.tile_px * scale / downsample - 1e-6)))


def read_tile(slide: Slide, plan: TilePlan, geometry: ReadGeometry, tile: Tile) -> npt.NDArray[np.uint8]:
    x0, y0 = tile.level0_origin(plan.level0_px_per_tile_px)
    region = slide.read_region(round(x0), round(y0), geometry.level, geometry.read_px, geometry.read_px)
    if geometry.read_px != plan.tile_px:
        interp = cv2.INTER_AREA if geometry.read_px > plan.tile_px else cv2.INTER_LINEAR
        region = cv2.resize(region, (plan.tile_px, plan.tile_px), interpolation=interp)
    return region


def read_batches(
    slide: Slide,
    plan: TilePlan,
    batch_size: int = DEFAULT_BATCH_SIZE,
    start_tile: int = 0,
) -> Iterator[TileBatch]:
    """Yield batches in plan order from `start_tile` on; the next batch is read while the
    caller works on the current one (OpenSlide releases the GIL while decoding)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    geometry = ReadGeometry.for_plan(slide, plan)
    chunks = [plan.tiles[i : i + batch_size] for i in range(start_tile, len(plan.tiles), batch_size)]

    def load(chunk: tuple[Tile, ...]) -> TileBatch:
        pixels = np.empty((len(chunk), plan.tile_px, plan.tile_px, 3), np.uint8)
        for i, tile in enumerate(chunk):
            pixels[i] = read_tile(slide, plan, geometry, tile)
        return TileBatch(chunk, pixels)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-prefetch") as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            assert pending is not None
            batch = pending.result()
            pending = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield batch
