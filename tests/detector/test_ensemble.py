"""Weighted box fusion and the ensemble detector."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import EnsembleDetector, ModelDetector, weighted_box_fusion
from services.detector.postprocess import TileDetections
from tests.conftest import MODEL_PATH


def _dets(rows: list[tuple[float, float, float, float, float]]) -> TileDetections:
    array = np.array(rows, np.float32).reshape(-1, 5)
    return TileDetections(array[:, :4], array[:, 4], np.zeros(len(array), np.int64))


def test_overlapping_boxes_of_two_models_fuse_into_a_score_weighted_box() -> None:
    a = _dets([(100, 100, 150, 150, 0.9)])
    b = _dets([(110, 100, 160, 150, 0.3)])
    fused = weighted_box_fusion([a, b], [1.0, 1.0], iou_threshold=0.4)
    assert len(fused) == 1
    np.testing.assert_allclose(fused.boxes_px[0], [102.5, 100, 152.5, 150])  # (0.9*100 + 0.3*110) / 1.2
    assert fused.scores[0] == pytest.approx((0.9 + 0.3) / 2)


def test_a_box_found_by_one_model_only_is_down_weighted() -> None:
    fused = weighted_box_fusion([_dets([(0, 0, 50, 50, 0.8)]), _dets([])], [1.0, 1.0])
    assert fused.scores.tolist() == pytest.approx([0.4])


def test_disjoint_boxes_stay_apart_and_weights_count() -> None:
    a = _dets([(0, 0, 50, 50, 0.6)])
    b = _dets([(200, 200, 250, 250, 0.6)])
    fused = weighted_box_fusion([a, b], [3.0, 1.0])
    assert sorted(fused.scores.tolist()) == pytest.approx([0.15, 0.45])


def test_ensemble_refuses_members_that_disagree_on_their_inputs() -> None:
    member = ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1))
    with pytest.raises(ValueError, match="two or more members"):
        EnsembleDetector([member], [1.0], 0.3)
    member.close()


def test_ensemble_of_one_model_twice_keeps_its_confident_detections(e2e_tiles: np.ndarray) -> None:
    single = ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1))
    twice = EnsembleDetector(
        [ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1)) for _ in range(2)],
        [1.0, 1.0],
        score_threshold=single.info.score_threshold,
    )
    assert twice.info.name == f"ensemble({single.info.name}+{single.info.name})"
    alone = single.detect(e2e_tiles)
    fused = twice.detect(e2e_tiles)
    assert [len(t) for t in fused] == [len(t) for t in alone]
    for a, f in zip(alone, fused, strict=True):
        np.testing.assert_allclose(np.sort(f.scores), np.sort(a.scores), atol=1e-5)
    single.close()
    twice.close()
