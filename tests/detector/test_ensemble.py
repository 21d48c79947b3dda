"""Weighted box fusion and the ensemble detector."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import EnsembleDetector, ModelDetector, weighted_box_fusion
from services.detector.errors import ModelError
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
    with pytest.raises(ModelError, match="two or more members"):  # a model error the CLI reports, not a bare ValueError
        EnsembleDetector([member], [1.0], 0.3)
    member.close()


def test_boxes_from_one_model_cannot_raise_a_fused_score_above_the_models() -> None:
    model_a = _dets([(100, 100, 150, 150, 0.9), (104, 104, 154, 154, 0.5)])  # two overlapping boxes
    model_b = _dets([(101, 100, 151, 150, 0.8)])
    fused = weighted_box_fusion([model_a, model_b], [1.0, 1.0], iou_threshold=0.4)
    assert len(fused) == 1
    assert fused.scores[0] == pytest.approx((0.9 + 0.5 + 0.8) / 3)  # not (0.9 + 0.5 + 0.8) / 2


def test_ensemble_of_one_model_twice_finds_what_the_model_finds(e2e_tiles: np.ndarray) -> None:
    single = ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1))
    twice = EnsembleDetector(
        [ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1)) for _ in range(2)],
        [1.0, 1.0],
        score_threshold=single.info.score_threshold,
    )
    assert twice.info.name == f"ensemble({single.info.name}+{single.info.name})"
    for alone, fused in zip(single.detect(e2e_tiles), twice.detect(e2e_tiles), strict=True):
        centres = (fused.boxes_px[:, :2] + fused.boxes_px[:, 2:]) / 2
        for box in alone.boxes_px:  # every confident detection of the model survives the fusion
            distance = np.hypot(*(centres - (box[:2] + box[2:]) / 2).T)
            assert distance.size and distance.min() < 30.0
    single.close()
    twice.close()
