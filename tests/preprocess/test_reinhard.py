"""Reinhard normalisation: the fast OpenCV/LUT path against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from mitoscope.synth import SynthParams, synthesize
from services.preprocess.errors import NormalisationError
from services.preprocess.reinhard import (
    LabStats,
    ReinhardNormaliser,
    normalise_reference,
    stats_from_images,
    tissue_pixels_lab,
)

TARGET = LabStats((60.0, 32.0, -17.0), (15.0, 8.5, 8.0))
# Tolerance, in 8-bit levels per channel: the fast path quantises Lab to 8 bits twice.
MEAN_ABS_TOLERANCE = 1.5
P99_TOLERANCE = 5


@pytest.fixture(scope="module")
def tiles() -> list[np.ndarray]:
    rgb = synthesize(SynthParams(1024, 1024, seed=8, tissue_fraction=0.8)).rgb
    return [np.ascontiguousarray(rgb[y : y + 512, x : x + 512]) for y in (0, 512) for x in (0, 512)]


def test_fast_path_matches_float64_reference(tiles: list[np.ndarray]) -> None:
    source = stats_from_images(tiles)
    normalise = ReinhardNormaliser(source, TARGET)
    for tile in tiles:
        fast = normalise(tile).astype(int)
        reference = normalise_reference(tile, source, TARGET).astype(int)
        diff = np.abs(fast - reference)
        assert diff.mean() < MEAN_ABS_TOLERANCE
        assert np.percentile(diff, 99) <= P99_TOLERANCE


def test_normalised_tissue_takes_the_target_statistics(tiles: list[np.ndarray]) -> None:
    normalise = ReinhardNormaliser(stats_from_images(tiles), TARGET)
    result = stats_from_images([normalise(t) for t in tiles])
    np.testing.assert_allclose(result.mean, TARGET.mean, atol=2.5)
    np.testing.assert_allclose(result.std, TARGET.std, rtol=0.2)


def test_glass_is_left_untouched_and_ignored_by_statistics() -> None:
    glass = np.full((64, 64, 3), (242, 241, 244), np.uint8)
    tissue = np.full((64, 64, 3), (200, 110, 170), np.uint8)
    tissue[::2] = (120, 70, 150)
    image = np.concatenate([glass, tissue], axis=1)
    assert tissue_pixels_lab(image).shape[0] == 64 * 64
    out = ReinhardNormaliser(stats_from_images([tissue]), TARGET)(image)
    np.testing.assert_array_equal(out[:, :64], glass)
    assert not np.array_equal(out[:, 64:], tissue)


def test_batches_are_normalised_tile_by_tile(tiles: list[np.ndarray]) -> None:
    normalise = ReinhardNormaliser(stats_from_images(tiles), TARGET)
    batch = np.stack(tiles)
    np.testing.assert_array_equal(normalise(batch)[2], normalise(tiles[2]))


def test_blank_glass_has_no_statistics() -> None:
    with pytest.raises(NormalisationError, match="tissue pixels"):
        stats_from_images([np.full((128, 128, 3), 245, np.uint8)])


def test_bad_statistics_and_inputs_are_refused() -> None:
    with pytest.raises(NormalisationError):
        LabStats.from_dict({"mean": [1.0, 2.0, 3.0], "std": [1.0, 0.0, 1.0]})
    with pytest.raises(NormalisationError, match="uint8 RGB"):
        ReinhardNormaliser(TARGET, TARGET)(np.zeros((8, 8, 3), np.float32))  # type: ignore[arg-type]
