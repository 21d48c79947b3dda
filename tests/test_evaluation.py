"""MIDOG-style matching and F1 on hand-computed cases."""

from __future__ import annotations

import pytest

from mitoscope.evaluation import MatchCounts, best_threshold, match_points, pr_curve

RADIUS = 30.0  # 7.5 µm at 0.25 µm/px


def test_detection_within_the_radius_is_a_true_positive() -> None:
    assert match_points([(10.0, 10.0, 0.9)], [(35.0, 10.0)], RADIUS) == MatchCounts(1, 0, 0)
    assert match_points([(10.0, 10.0, 0.9)], [(41.0, 10.0)], RADIUS) == MatchCounts(0, 1, 1)


def test_each_truth_is_matched_once() -> None:
    counts = match_points([(0.0, 0.0, 0.9), (2.0, 0.0, 0.8)], [(1.0, 0.0)], RADIUS)
    assert counts == MatchCounts(tp=1, fp=1, fn=0)


def test_detection_near_two_truths_takes_the_nearest_and_leaves_the_other() -> None:
    # The first (higher score) detection lies 12 px from truth A and 8 px from truth B: it takes B;
    # the second then takes A, 25 px away.
    counts = match_points([(12.0, 0.0, 0.9), (25.0, 0.0, 0.8)], [(0.0, 0.0), (20.0, 0.0)], RADIUS)
    assert counts == MatchCounts(2, 0, 0)


def test_higher_score_matches_first_and_ties_keep_input_order() -> None:
    # Both detections compete for one truth; the higher score wins it whatever the order given.
    counts = match_points([(5.0, 0.0, 0.5), (25.0, 0.0, 0.7)], [(0.0, 0.0)], RADIUS)
    assert counts == MatchCounts(1, 1, 0)
    # Equal scores: the first listed is matched first (a stable sort), still one TP and one FP.
    assert match_points([(5.0, 0.0, 0.7), (25.0, 0.0, 0.7)], [(0.0, 0.0)], RADIUS) == MatchCounts(1, 1, 0)


def test_f1_is_computed_from_summed_counts_not_averaged() -> None:
    image_a = match_points([(0.0, 0.0, 0.9)], [(0.0, 0.0)], RADIUS)  # F1 1.0
    image_b = match_points([], [(0.0, 0.0), (100.0, 0.0), (200.0, 0.0)], RADIUS)  # F1 0.0
    total = image_a + image_b
    assert total == MatchCounts(1, 0, 3)
    assert total.f1 == pytest.approx(2 * 1 / (2 * 1 + 0 + 3))  # 0.4, not the mean 0.5
    assert (total.precision, total.recall) == (1.0, 0.25)


def test_empty_cases_do_not_divide_by_zero() -> None:
    assert MatchCounts(0, 0, 0).f1 == 0.0
    assert match_points([], [], RADIUS) == MatchCounts(0, 0, 0)


def test_pr_curve_and_best_threshold() -> None:
    images = [([(0.0, 0.0, 0.9), (300.0, 0.0, 0.4), (600.0, 0.0, 0.2)], [(0.0, 0.0), (300.0, 0.0)])]
    curve = pr_curve(images, RADIUS, [0.1, 0.3, 0.5])
    assert [c for _, c in curve] == [MatchCounts(2, 1, 0), MatchCounts(2, 0, 0), MatchCounts(1, 0, 1)]
    assert best_threshold(curve) == (0.3, MatchCounts(2, 0, 0))
