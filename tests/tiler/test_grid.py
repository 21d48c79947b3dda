"""The tile grid covers every tissue pixel, and each one belongs to exactly one tile's core."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mitoscope.pipeline import ScoreOptions, prepare_slide
from mitoscope.slide_files import truth_path_for
from services.aggregator.merge import owned_bounds
from services.tiler.grid import plan_tiles
from services.tiler.reader import ReadGeometry, read_batches, read_tile
from services.tiler.tissue import TissueMask
from tests.conftest import shared_file


def _blob_mask(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for _ in range(6):
        centre = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        axes = (int(rng.integers(3, 25)), int(rng.integers(3, 25)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


@pytest.mark.parametrize(("seed", "slide_mpp", "overlap_px"), [(0, 0.25, 96), (1, 0.5, 64), (2, 0.2281, 128)])
def test_every_tissue_pixel_is_in_a_tile_and_in_exactly_one_core(seed: int, slide_mpp: float, overlap_px: int) -> None:
    mask = _blob_mask(seed, (90, 120))
    level0_per_mask = 24.0
    tissue = TissueMask(mask, level0_per_mask, slide_mpp)
    width, height = int(120 * level0_per_mask), int(90 * level0_per_mask)
    plan = plan_tiles(width, height, slide_mpp, tissue, overlap_px=overlap_px)
    occupied = {(t.row, t.col) for t in plan.tiles}
    model_per_mask = level0_per_mask / plan.level0_px_per_tile_px
    ys, xs = np.nonzero(mask)
    centres = np.stack([(xs + 0.5) * model_per_mask, (ys + 0.5) * model_per_mask], axis=1)
    in_footprint = np.zeros(len(centres), int)
    in_core = np.zeros(len(centres), int)
    for tile in plan.tiles:
        local = centres - np.array([tile.x_px, tile.y_px])
        inside = ((local >= 0) & (local < plan.tile_px)).all(axis=1)
        x0, y0, x1, y1 = owned_bounds(plan, tile, occupied)
        core = (local[:, 0] >= x0) & (local[:, 0] < x1) & (local[:, 1] >= y0) & (local[:, 1] < y1)
        in_footprint += inside
        in_core += core & inside
    assert in_footprint.min() >= 1, "a tissue pixel lies in no tile"
    assert (in_core == 1).all(), "a tissue pixel is owned by zero or several tiles"
    assert len(plan.tiles) < plan.rows * plan.cols, "glass-only tiles should be skipped"


def test_tiles_overlap_by_more_than_a_mitosis() -> None:
    tissue = TissueMask(np.ones((10, 10), bool), 100.0, 0.25)
    plan = plan_tiles(1000, 1000, 0.25, tissue)
    assert plan.overlap_px * plan.model_mpp_um_per_px >= 15.0  # the largest mitotic figures


def test_tissue_area_matches_the_painted_tissue(small_slide: Path) -> None:
    prepared = prepare_slide(small_slide, ScoreOptions(), 0.25, 512)
    prepared.slide.close()
    truth = json.loads(truth_path_for(small_slide).read_text())
    assert prepared.tissue.area_mm2 == pytest.approx(truth["tissue_area_mm2"], rel=0.1)


def test_batches_cover_the_plan_in_order(small_slide: Path) -> None:
    prepared = prepare_slide(small_slide, ScoreOptions(), 0.25, 512)
    with prepared.slide as slide:
        batches = list(read_batches(slide, prepared.plan, batch_size=4))
        indices = [t.index for b in batches for t in b.tiles]
        assert indices == list(range(len(prepared.plan.tiles)))
        assert all(b.pixels.shape[1:] == (512, 512, 3) for b in batches)
        resumed = list(read_batches(slide, prepared.plan, batch_size=4, start_tile=5))
        assert resumed[0].tiles[0].index == 5
        np.testing.assert_array_equal(resumed[0].pixels[0], batches[1].pixels[1])


@pytest.mark.shared
def test_20x_slide_is_resampled_to_the_model_resolution() -> None:
    prepared = prepare_slide(shared_file("slides/CMU-1-Small-Region.svs"), ScoreOptions(), 0.25, 512)
    with prepared.slide as slide:
        plan = prepared.plan
        assert plan.level0_px_per_tile_px == pytest.approx(0.25 / 0.499)
        geometry = ReadGeometry.for_plan(slide, plan)
        assert geometry.read_px == 257  # 512 px at 0.25 µm/px is 256.5 px at 0.499 µm/px
        tile = read_tile(slide, plan, geometry, plan.tiles[len(plan.tiles) // 2])
        assert tile.shape == (512, 512, 3)
        # Upsampled 2x: neighbouring pixels are strongly correlated.
        grey = tile.mean(axis=2)
        assert np.abs(np.diff(grey, axis=1)).mean() < np.abs(grey - grey.mean()).mean()
