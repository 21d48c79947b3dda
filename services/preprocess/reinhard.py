"""Reinhard colour normalisation in CIE Lab, with slide-level source statistics.

Statistics are CIE L*a*b* means and standard deviations (L in 0..100, a/b around 0). The
source statistics are computed once per slide over tissue pixels, not per tile: per-tile
statistics would change a tile's colours with its content (HistomicsTK does the same).

Glass (bright, colourless source pixels) is left as it is, like HistomicsTK's `mask_out`:
mapping white through tissue statistics would tint the background.

The fast path converts a uint8 tile with OpenCV's 8-bit Lab conversion and maps each channel
through a 256-entry lookup table; `normalise_reference` is the plain float64 formula used to
check it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from services.preprocess.errors import NormalisationError

# OpenCV's 8-bit Lab: L8 = L * 255 / 100, a8 = a + 128, b8 = b + 128.
_L_SCALE = 255.0 / 100.0
_AB_OFFSET = 128.0
# Pixels this bright and unsaturated are glass, not tissue, when gathering statistics.
GLASS_MIN_LIGHTNESS = 88.0
GLASS_MAX_CHROMA = 8.0  # per a/b axis
MIN_TISSUE_PIXELS = 1000
STATS_SAMPLE_TILES = 32  # tiles spread evenly over a slide's plan give its source statistics


def stats_sample_indices(total_tiles: int, sample_tiles: int = STATS_SAMPLE_TILES) -> list[int]:
    """Which tiles of a plan a slide's source statistics are computed from: spread evenly, the same
    ones whether the slide is scored in one process or through the services."""
    step = max(1, total_tiles // sample_tiles)
    return list(range(total_tiles))[::step][:sample_tiles]


@dataclass(frozen=True)
class LabStats:
    """Mean and standard deviation of each CIE Lab channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> LabStats:
        mean, std = data["mean"], data["std"]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise NormalisationError(f"invalid Lab statistics: {data!r}")
        return cls((float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2])))

    @classmethod
    def load(cls, path: Path) -> LabStats:
        return cls.from_dict(json.loads(path.read_text()))


def rgb_to_lab8(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)


def _lab8_to_lab(lab8: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    lab = lab8.astype(np.float64)
    lab[..., 0] /= _L_SCALE
    lab[..., 1:] -= _AB_OFFSET
    return lab


_GLASS_LAB8_LOW = (
    int(np.ceil(GLASS_MIN_LIGHTNESS * _L_SCALE)),
    int(_AB_OFFSET - GLASS_MAX_CHROMA),
    int(_AB_OFFSET - GLASS_MAX_CHROMA),
)
_GLASS_LAB8_HIGH = (255, int(_AB_OFFSET + GLASS_MAX_CHROMA), int(_AB_OFFSET + GLASS_MAX_CHROMA))


def _glass_mask_lab8(lab8: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """255 where a pixel is bright, colourless glass: L >= 88 and |a|, |b| <= 8 (8-bit Lab)."""
    return cv2.inRange(lab8, _GLASS_LAB8_LOW, _GLASS_LAB8_HIGH)


def tissue_pixels_lab(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """CIE Lab values (N, 3) of the pixels that are not bright, colourless glass."""
    lab8 = rgb_to_lab8(rgb)
    return _lab8_to_lab(lab8[_glass_mask_lab8(lab8) == 0])


def stats_from_pixels(lab_pixels: npt.NDArray[np.float64]) -> LabStats:
    if lab_pixels.shape[0] < MIN_TISSUE_PIXELS:
        raise NormalisationError(
            f"only {lab_pixels.shape[0]} tissue pixels to estimate colour statistics from "
            f"(need {MIN_TISSUE_PIXELS}); is the region blank glass?"
        )
    mean = lab_pixels.mean(axis=0)
    std = np.maximum(lab_pixels.std(axis=0), 1e-3)
    return LabStats((float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2])))


def stats_from_images(images: list[npt.NDArray[np.uint8]]) -> LabStats:
    """Statistics over the tissue pixels of several images taken together (e.g. a slide's tiles)."""
    if not images:
        raise NormalisationError("no images to estimate colour statistics from")
    return stats_from_pixels(np.concatenate([tissue_pixels_lab(im) for im in images]))


@dataclass(frozen=True)
class ReinhardNormaliser:
    """Maps source Lab statistics onto target ones; built once per slide, applied per tile."""

    source: LabStats
    target: LabStats

    def __post_init__(self) -> None:
        levels = np.arange(256, dtype=np.float64)
        luts = []
        for channel in range(3):
            if channel == 0:
                value = levels / _L_SCALE
            else:
                value = levels - _AB_OFFSET
            mapped = (value - self.source.mean[channel]) / self.source.std[channel]
            mapped = mapped * self.target.std[channel] + self.target.mean[channel]
            mapped8 = mapped * _L_SCALE if channel == 0 else mapped + _AB_OFFSET
            luts.append(np.clip(np.rint(mapped8), 0, 255).astype(np.uint8))
        object.__setattr__(self, "_luts", luts)

    def __call__(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Normalise one RGB uint8 image (H, W, 3) or a batch (N, H, W, 3)."""
        if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
            raise NormalisationError(f"expected uint8 RGB, got {rgb.dtype} {rgb.shape}")
        if rgb.ndim == 4:
            return np.stack([self(tile) for tile in rgb])
        luts: list[npt.NDArray[np.uint8]] = self._luts  # type: ignore[attr-defined]
        lab8 = rgb_to_lab8(rgb)
        glass = _glass_mask_lab8(lab8)
        for channel in range(3):
            lab8[..., channel] = cv2.LUT(lab8[..., channel], luts[channel])
        out = cv2.cvtColor(lab8, cv2.COLOR_LAB2RGB)
        cv2.copyTo(rgb, glass, out)
        return out


def normalise_reference(rgb: npt.NDArray[np.uint8], source: LabStats, target: LabStats) -> npt.NDArray[np.uint8]:
    """Straightforward float64 Reinhard (CIE Lab, D65): the reference the fast path must match."""
    lab = _srgb_to_lab(rgb.astype(np.float64) / 255.0)
    glass = (np.rint(lab[..., 0] * _L_SCALE) >= _GLASS_LAB8_LOW[0]) & (
        np.abs(lab[..., 1:]).max(axis=-1) <= GLASS_MAX_CHROMA
    )
    mean_s, std_s = np.asarray(source.mean), np.asarray(source.std)
    mean_t, std_t = np.asarray(target.mean), np.asarray(target.std)
    lab = (lab - mean_s) / std_s * std_t + mean_t
    out = np.clip(np.rint(_lab_to_srgb(lab) * 255.0), 0, 255).astype(np.uint8)
    out[glass] = rgb[glass]
    return out


_D65_WHITE = np.array([0.950456, 1.0, 1.088754])
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])


def _srgb_to_lab(rgb: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lightness = np.where(xyz[..., 1] > 0.008856, 116.0 * f[..., 1] - 16.0, 903.3 * xyz[..., 1])
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)


def _lab_to_srgb(lab: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787) * _D65_WHITE
    linear = np.clip(xyz @ np.linalg.inv(_RGB_TO_XYZ).T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
