"""Hotspot and Nottingham score on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.aggregator.errors import GradingParameterError
from services.aggregator.grading import CAP_MITOTIC_THRESHOLDS, field_area_mm2, mitotic_score
from services.aggregator.hotspot import find_hotspot
from services.aggregator.merge import SlideDetection
from services.tiler.tissue import TissueMask

MPP = 0.25


def _dets(points: list[tuple[float, float]]) -> list[SlideDetection]:
    return [SlideDetection(x, y, (x - 25, y - 25, x + 25, y + 25), 0.9, "mitosis", 0) for x, y in points]


def test_ten_hpf_of_055_mm_fields_is_2376_mm2() -> None:
    assert 10 * field_area_mm2(0.55) == pytest.approx(2.376, abs=0.001)


@pytest.mark.parametrize(
    ("diameter", "count", "score"),
    [
        (0.55, 0, 1),
        (0.55, 8, 1),
        (0.55, 9, 2),
        (0.55, 17, 2),
        (0.55, 18, 3),
        (0.40, 4, 1),
        (0.40, 5, 2),
        (0.40, 10, 3),
        (0.69, 27, 2),
        (0.69, 28, 3),
    ],
)
def test_cap_table_scores(diameter: float, count: int, score: int) -> None:
    assert mitotic_score(count, diameter) == score


def test_every_cap_row_is_monotonic() -> None:
    for diameter, (first, second) in CAP_MITOTIC_THRESHOLDS.items():
        assert first < second
        assert [mitotic_score(n, diameter) for n in (first, first + 1, second, second + 1)] == [1, 2, 2, 3]


def test_unknown_field_diameter_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(GradingParameterError, match=r"0\.40, 0\.44"):
        mitotic_score(3, 0.52)


def test_hotspot_finds_the_dense_cluster() -> None:
    side_px = 40_000  # 10 mm at 0.25 µm/px
    rng = np.random.default_rng(1)
    background = [(float(x), float(y)) for x, y in rng.uniform(0, side_px, (15, 2))]
    # 12 mitoses packed into a 1 mm square centred at (30000, 10000).
    cluster = [(float(x), float(y)) for x, y in rng.uniform(-2000, 2000, (12, 2)) + np.array([30_000, 10_000])]
    tissue = TissueMask(np.ones((400, 400), bool), side_px / 400, MPP)
    hotspot = find_hotspot(_dets(background + cluster), side_px, side_px, MPP, tissue, 0.55)
    window_px = math.sqrt(10 * field_area_mm2(0.55)) * 1000 / MPP
    assert hotspot.width_px == pytest.approx(window_px) and hotspot.height_px == pytest.approx(window_px)
    assert hotspot.count >= 12
    inside = [
        (x, y)
        for x, y in background + cluster
        if hotspot.x_px <= x < hotspot.x_px + hotspot.width_px and hotspot.y_px <= y < hotspot.y_px + hotspot.height_px
    ]
    assert len(inside) == hotspot.count
    assert all(hotspot.x_px <= x < hotspot.x_px + hotspot.width_px for x, _ in cluster)
    assert hotspot.window_area_mm2 == pytest.approx(2.376, rel=1e-3)


def test_hotspot_on_a_slide_smaller_than_ten_fields_is_clipped_and_says_so() -> None:
    side_px = 4000  # 1 mm: smaller than the 1.54 mm window
    tissue = TissueMask(np.ones((100, 100), bool), 40.0, MPP)
    hotspot = find_hotspot(_dets([(100.0, 100.0), (3900.0, 3900.0)]), side_px, side_px, MPP, tissue, 0.55)
    assert (hotspot.width_px, hotspot.height_px) == (side_px, side_px)
    assert hotspot.count == 2
    assert hotspot.window_area_mm2 == pytest.approx(1.0)
    assert hotspot.tissue_area_mm2 == pytest.approx(1.0, rel=0.01)


def test_ties_go_to_the_window_with_more_tissue() -> None:
    side_px = 40_000
    mask = np.zeros((400, 400), bool)
    mask[:, 200:] = True  # tissue only on the right half
    tissue = TissueMask(mask, 100.0, MPP)
    hotspot = find_hotspot([], side_px, side_px, MPP, tissue, 0.55)
    assert hotspot.count == 0
    assert hotspot.x_px >= 20_000
