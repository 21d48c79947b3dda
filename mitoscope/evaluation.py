"""Detection-versus-truth matching as the MIDOG challenge does it.

A detection is a true positive when it lies within 7.5 µm of a ground-truth point; each truth
point matches at most one detection. Matching is greedy by detection score (highest first),
each detection taking the nearest unmatched truth in range. F1 comes from TP/FP/FN summed over
all images, never averaged per image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MIDOG_MATCH_RADIUS_UM = 7.5


@dataclass(frozen=True)
class MatchCounts:
    tp: int
    fp: int
    fn: int

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 0.0


def match_points(
    detections: Iterable[tuple[float, float, float]],
    truths: Iterable[tuple[float, float]],
    radius_px: float,
) -> MatchCounts:
    """`detections` as (x, y, score), `truths` as (x, y), both in the same pixel space."""
    dets = sorted(detections, key=lambda d: -d[2])
    truth = np.asarray(list(truths), dtype=np.float64).reshape(-1, 2)
    taken = np.zeros(len(truth), bool)
    tp = 0
    for x, y, _ in dets:
        if not len(truth):
            break
        distance = np.hypot(truth[:, 0] - x, truth[:, 1] - y)
        distance[taken] = np.inf
        best = int(np.argmin(distance))
        if distance[best] <= radius_px:
            taken[best] = True
            tp += 1
    return MatchCounts(tp=tp, fp=len(dets) - tp, fn=len(truth) - tp)


ScoredImage = tuple[list[tuple[float, float, float]], list[tuple[float, float]]]  # (detections, truths)


def pr_curve(
    images: list[ScoredImage], radius_px: float, thresholds: Iterable[float]
) -> list[tuple[float, MatchCounts]]:
    """Summed TP/FP/FN over all images at each score threshold (detections below it are dropped)."""
    curve = []
    for threshold in thresholds:
        total = MatchCounts(0, 0, 0)
        for detections, truths in images:
            total = total + match_points([d for d in detections if d[2] >= threshold], truths, radius_px)
        curve.append((float(threshold), total))
    return curve


def best_threshold(curve: list[tuple[float, MatchCounts]]) -> tuple[float, MatchCounts]:
    """The threshold with the highest F1; ties go to the lower threshold (more recall)."""
    return max(curve, key=lambda item: (item[1].f1, -item[0]))
