"""Protobuf messages between services round-trip the domain objects exactly."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.messages import (
    batch_from_message,
    batch_to_message,
    detections_from_message,
    detections_to_message,
    stats_from_message,
    stats_to_message,
)
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.wire import MessageError
from services.detector.postprocess import TileDetections
from services.preprocess.reinhard import LabStats
from services.tiler.grid import Tile


def test_tile_batch_round_trips_through_bytes() -> None:
    tiles = (Tile(0, 0, 0, 0, 0), Tile(1, 0, 1, 416, 0))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    wire = batch_to_message("slide-1", tiles, pixels).SerializeToString()
    back_tiles, back_pixels = batch_from_message(pb.TileBatch.FromString(wire))
    assert back_tiles == tiles
    np.testing.assert_array_equal(back_pixels, pixels)
    assert len(wire) < pixels.nbytes + 200  # raw uint8 plus a small header


def test_inconsistent_batch_is_refused() -> None:
    message = pb.TileBatch(slide_id="s", tile_px=64, tiles=[pb.Tile(index=0)], pixels=b"\x00" * 10)
    with pytest.raises(MessageError, match="needs 12288 pixel bytes, got 10"):
        batch_from_message(message)


def test_stats_and_detections_round_trip() -> None:
    stats = LabStats((60.0, 30.0, -15.0), (14.0, 8.0, 7.5))
    assert stats_from_message(pb.LabStats.FromString(stats_to_message(stats).SerializeToString())) == stats
    tiles = (Tile(3, 1, 1, 416, 416), Tile(4, 1, 2, 832, 416))
    found = [
        TileDetections(np.array([[1, 2, 51, 52]], np.float32), np.array([0.75], np.float32), np.array([0])),
        TileDetections.empty(),
    ]
    wire = detections_to_message("s", "yolov5n_mitosis", tiles, found).SerializeToString()
    back = detections_from_message(pb.Detections.FromString(wire))
    assert set(back) == {3, 4} and len(back[4]) == 0
    np.testing.assert_allclose(back[3].boxes_px, found[0].boxes_px)
    assert back[3].scores[0] == pytest.approx(0.75)
    assert back[3].mitosis_probabilities is None  # no second stage: no probabilities invented


def test_second_stage_probabilities_cross_the_wire() -> None:
    tiles = (Tile(0, 0, 0, 0, 0),)
    found = [
        TileDetections(
            np.array([[1, 2, 51, 52], [100, 100, 150, 150]], np.float32),
            np.array([0.3, 0.2], np.float32),
            np.array([0, 1]),
            mitosis_probabilities=np.array([0.91, 0.88], np.float32),
            atypical_probabilities=np.array([0.1, 0.8], np.float32),
        )
    ]
    wire = detections_to_message("s", "yolov5n_mitosis+mitosis_classifier", tiles, found).SerializeToString()
    (back,) = detections_from_message(pb.Detections.FromString(wire)).values()
    assert back.mitosis_probabilities is not None and back.atypical_probabilities is not None
    np.testing.assert_allclose(back.mitosis_probabilities, [0.91, 0.88], rtol=1e-6)
    np.testing.assert_allclose(back.atypical_probabilities, [0.1, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(back.class_ids, [0, 1])
