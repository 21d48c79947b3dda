"""Tile detections become slide detections, and a mitosis on a tile border counts once."""

from __future__ import annotations

import numpy as np
import pytest

from services.aggregator.merge import SlideDetection, cluster_detections, merge_tile_detections
from services.detector.postprocess import TileDetections
from services.tiler.grid import TilePlan, plan_tiles
from services.tiler.tissue import TissueMask

CLASSES = ("mitosis",)
BOX_PX = 50


def _plan(slide_mpp: float = 0.25, size_px: int = 2048) -> TilePlan:
    return plan_tiles(size_px, size_px, slide_mpp, TissueMask(np.ones((64, 64), bool), size_px / 64, slide_mpp))


def _seen_by_every_tile(
    plan: TilePlan, x_level0: float, y_level0: float, jitter_px: float = 0.0
) -> dict[int, TileDetections]:
    """What a perfect detector returns: the figure in every tile whose footprint holds it."""
    scale = plan.level0_px_per_tile_px
    per_tile = {}
    rng = np.random.default_rng(0)
    for tile in plan.tiles:
        cx = x_level0 / scale - tile.x_px + rng.uniform(-jitter_px, jitter_px)
        cy = y_level0 / scale - tile.y_px + rng.uniform(-jitter_px, jitter_px)
        if 0 <= cx < plan.tile_px and 0 <= cy < plan.tile_px:
            box = np.array([[cx - BOX_PX / 2, cy - BOX_PX / 2, cx + BOX_PX / 2, cy + BOX_PX / 2]], np.float32)
            per_tile[tile.index] = TileDetections(box, np.array([0.9], np.float32), np.array([0]))
    return per_tile


@pytest.mark.parametrize("slide_mpp", [0.25, 0.499])
def test_mitosis_on_a_tile_border_is_counted_once(slide_mpp: float) -> None:
    plan = _plan(slide_mpp)
    scale = plan.level0_px_per_tile_px
    stride = plan.stride_px
    # On the vertical border, the horizontal border, and the corner where four tiles meet.
    spots = [(stride + plan.overlap_px / 2, 300.0), (300.0, stride + 10.0), (stride + 40.0, stride + 50.0)]
    for x_model, y_model in spots:
        per_tile = _seen_by_every_tile(plan, x_model * scale, y_model * scale, jitter_px=6.0)
        assert len(per_tile) >= 2, "the figure should lie in the overlap of several tiles"
        merged = merge_tile_detections(plan, per_tile, CLASSES)
        assert len(merged) == 1
        assert merged[0].x_px == pytest.approx(x_model * scale, abs=7 * scale)
        assert merged[0].y_px == pytest.approx(y_model * scale, abs=7 * scale)


def test_mitoses_that_are_close_but_distinct_are_both_kept() -> None:
    plan = _plan()
    per_tile: dict[int, TileDetections] = {}
    for x, y in ((700.0, 700.0), (700.0 + 12 / 0.25, 700.0)):  # 12 µm apart
        for index, dets in _seen_by_every_tile(plan, x, y).items():
            old = per_tile.get(index, TileDetections.empty())
            per_tile[index] = TileDetections(
                np.concatenate([old.boxes_px, dets.boxes_px]),
                np.concatenate([old.scores, dets.scores]),
                np.concatenate([old.class_ids, dets.class_ids]),
            )
    assert len(merge_tile_detections(plan, per_tile, CLASSES)) == 2


def test_clustering_keeps_the_highest_score_within_the_radius() -> None:
    dets = [
        SlideDetection(100.0, 100.0, (0, 0, 1, 1), 0.5, "mitosis", 0),
        SlideDetection(110.0, 105.0, (0, 0, 1, 1), 0.8, "mitosis", 1),
        SlideDetection(200.0, 100.0, (0, 0, 1, 1), 0.6, "mitosis", 1),
    ]
    kept = cluster_detections(dets, radius_px=30.0)
    assert sorted((d.x_px, d.score) for d in kept) == [(110.0, 0.8), (200.0, 0.6)]


def test_detections_map_to_level0_with_the_slide_resolution() -> None:
    plan = _plan(slide_mpp=0.5, size_px=1024)
    tile = plan.tiles[0]
    box = np.array([[100.0, 200.0, 150.0, 250.0]], np.float32)
    merged = merge_tile_detections(
        plan, {tile.index: TileDetections(box, np.array([0.7], np.float32), np.array([0]))}, CLASSES
    )
    assert (merged[0].x_px, merged[0].y_px) == pytest.approx((62.5, 112.5))
    assert merged[0].box_px == pytest.approx((50.0, 100.0, 75.0, 125.0))


def test_second_stage_probabilities_and_atypical_figures_reach_the_result() -> None:
    from services.aggregator.result import _detection, summarise

    plan = _plan()
    boxes = np.array([[200, 200, 250, 250], [300, 300, 350, 350]], np.float32)
    per_tile = {
        plan.tiles[0].index: TileDetections(
            boxes,
            np.array([0.2, 0.3], np.float32),
            np.array([0, 1]),
            mitosis_probabilities=np.array([0.9, 0.95], np.float32),
            atypical_probabilities=np.array([0.1, 0.7], np.float32),
        )
    }
    merged = merge_tile_detections(plan, per_tile, ("mitosis", "atypical_mitosis"))
    assert [d.class_name for d in merged] == ["mitosis", "atypical_mitosis"]
    assert [d.mitosis_probability for d in merged] == pytest.approx([0.9, 0.95])
    tissue = TissueMask(np.ones((64, 64), bool), 2048 / 64, 0.25)
    summary = summarise(merged, 2048, 2048, 0.25, tissue)
    assert summary.mitosis_count == 2 and summary.atypical_count == 1 and summary.atypical_fraction == 0.5
    assert _detection(2, merged[1]).atypical_probability == pytest.approx(0.7)
    assert _detection(2, merged[1]).model_dump(by_alias=True)["class"] == "atypical_mitosis"
    without = summarise(
        merge_tile_detections(plan, {0: TileDetections(boxes, np.array([0.9, 0.8], np.float32), np.zeros(2))}, CLASSES),
        2048,
        2048,
        0.25,
        tissue,
    )
    assert without.atypical_count == 0
