"""Reinhard per-tile time: the fast path (`ReinhardNormaliser`) against straightforward numpy float Reinhard.

Tiles are 512 px tissue tiles cut from a seeded synthetic image. Source statistics come from those
tiles (`stats_from_images`), the target is fixed. Arms, per tile:
- float64 reference: `normalise_reference` (plain float64 numpy CIE Lab, the fast path's reference);
- float32 numpy: the same formula in float32 (written here, for orientation);
- fast path: `ReinhardNormaliser(source, target)(tile)` (OpenCV 8-bit Lab + lookup tables).
Repetitions run the arms in turn (reference, float32, fast, reference, ...); the table gives median
ms/tile, the median of per-repetition speed-ups against the float64 reference, and how far each
output is from the reference in 8-bit levels (over all channels of all tiles). Nothing is asserted.

    python -m bench.reinhard [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from mitoscope.synth import SynthParams, synthesize
from services.preprocess.reinhard import (
    GLASS_MAX_CHROMA,
    GLASS_MIN_LIGHTNESS,
    LabStats,
    ReinhardNormaliser,
    normalise_reference,
    stats_from_images,
    tissue_pixels_lab,
)

TILE_PX = 512
DEFAULT_IMAGE_PX = 2048
DEFAULT_SEED = 3
DEFAULT_REPS = 7
DEFAULT_MIN_TISSUE_FRACTION = 0.5
TARGET = LabStats((60.0, 32.0, -17.0), (15.0, 8.5, 8.0))
GOAL_SPEEDUP = 5.0

Image = npt.NDArray[np.uint8]

# The reference's constants (sRGB / D65, as in services.preprocess.reinhard), in float32.
_D65_WHITE_F32 = np.array([0.950456, 1.0, 1.088754], np.float32)
_RGB_TO_XYZ_F32 = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]], np.float32
)
_XYZ_TO_RGB_F32 = np.linalg.inv(_RGB_TO_XYZ_F32.astype(np.float64)).astype(np.float32)


def normalise_float32(rgb: Image, source: LabStats, target: LabStats) -> Image:
    """`normalise_reference`'s formula in float32 numpy (same glass rule)."""
    srgb = rgb.astype(np.float32) / np.float32(255.0)
    linear = np.where(
        srgb <= 0.04045, srgb / np.float32(12.92), ((srgb + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4)
    )
    xyz = linear @ _RGB_TO_XYZ_F32.T / _D65_WHITE_F32
    f = np.where(xyz > 0.008856, np.cbrt(xyz), np.float32(7.787) * xyz + np.float32(16.0 / 116.0))
    lightness = np.where(xyz[..., 1] > 0.008856, 116.0 * f[..., 1] - 16.0, 903.3 * xyz[..., 1])
    lab = np.stack([lightness, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)
    lab = lab.astype(np.float32, copy=False)
    glass = (np.rint(lab[..., 0] * np.float32(255.0 / 100.0)) >= np.ceil(GLASS_MIN_LIGHTNESS * 255.0 / 100.0)) & (
        np.abs(lab[..., 1:]).max(axis=-1) <= GLASS_MAX_CHROMA
    )
    mean_s, std_s = np.asarray(source.mean, np.float32), np.asarray(source.std, np.float32)
    mean_t, std_t = np.asarray(target.mean, np.float32), np.asarray(target.std, np.float32)
    lab = (lab - mean_s) / std_s * std_t + mean_t
    fy = (lab[..., 0] + np.float32(16.0)) / np.float32(116.0)
    f = np.stack([fy + lab[..., 1] / np.float32(500.0), fy, fy - lab[..., 2] / np.float32(200.0)], axis=-1)
    xyz = np.where(f > 0.206893, f**3, (f - np.float32(16.0 / 116.0)) / np.float32(7.787)) * _D65_WHITE_F32
    linear = np.clip(xyz @ _XYZ_TO_RGB_F32.T, 0.0, 1.0)
    srgb = np.where(
        linear <= 0.0031308,
        np.float32(12.92) * linear,
        np.float32(1.055) * linear ** np.float32(1 / 2.4) - np.float32(0.055),
    )
    out = np.clip(np.rint(srgb * np.float32(255.0)), 0, 255).astype(np.uint8)
    out[glass] = rgb[glass]
    return out


def tissue_tiles(rgb: Image, min_tissue_fraction: float) -> list[Image]:
    """Non-overlapping 512 px tiles, row by row, whose non-glass fraction reaches `min_tissue_fraction`."""
    tiles: list[Image] = []
    for y in range(0, rgb.shape[0] - TILE_PX + 1, TILE_PX):
        for x in range(0, rgb.shape[1] - TILE_PX + 1, TILE_PX):
            tile = np.ascontiguousarray(rgb[y : y + TILE_PX, x : x + TILE_PX])
            if tissue_pixels_lab(tile).shape[0] / TILE_PX**2 >= min_tissue_fraction:
                tiles.append(tile)
    return tiles


@dataclass(frozen=True)
class ArmResult:
    name: str
    ms_per_tile: float
    speedup: float  # median of per-repetition reference time / this arm's time
    mean_abs_levels: float
    p99_abs_levels: float
    max_abs_levels: int


def _ms_per_tile(fn: Callable[[Image], Image], tiles: list[Image]) -> float:
    start = time.perf_counter()
    for tile in tiles:
        fn(tile)
    return (time.perf_counter() - start) * 1000.0 / len(tiles)


def run(tiles: list[Image], source: LabStats, reps: int) -> list[ArmResult]:
    """Time the arms in turn, `reps` times each after one untimed warm-up; compare outputs to the reference."""
    fast = ReinhardNormaliser(source, TARGET)
    arms: dict[str, Callable[[Image], Image]] = {
        "float64 numpy (normalise_reference)": lambda t: normalise_reference(t, source, TARGET),
        "float32 numpy": lambda t: normalise_float32(t, source, TARGET),
        "fast path (ReinhardNormaliser)": fast,
    }
    for fn in arms.values():
        _ms_per_tile(fn, tiles[:1])
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(reps):
        for name, fn in arms.items():
            times[name].append(_ms_per_tile(fn, tiles))

    reference_name = next(iter(arms))
    reference = np.stack([normalise_reference(t, source, TARGET) for t in tiles]).astype(np.int16)
    results = []
    for name, fn in arms.items():
        diff = np.abs(np.stack([fn(t) for t in tiles]).astype(np.int16) - reference)
        speedups = [r / c for r, c in zip(times[reference_name], times[name], strict=True)]
        results.append(
            ArmResult(
                name,
                statistics.median(times[name]),
                statistics.median(speedups),
                float(diff.mean()),
                float(np.percentile(diff, 99)),
                int(diff.max()),
            )
        )
    return results


def format_table(results: list[ArmResult]) -> str:
    lines = [
        "| arm | ms/tile | speed-up vs float64 | mean abs diff | p99 abs diff | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.ms_per_tile:.1f} | {r.speedup:.1f}x | {r.mean_abs_levels:.3f} "
            f"| {r.p99_abs_levels:.0f} | {r.max_abs_levels} |"
        )
    return "\n".join(lines)


def _fmt(values: tuple[float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in values) + ")"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reinhard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="timed repetitions per arm (default 7)")
    parser.add_argument("--image-px", type=int, default=DEFAULT_IMAGE_PX, help="synthetic image side (default 2048)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="synthetic image seed (default 3)")
    parser.add_argument(
        "--min-tissue-fraction",
        type=float,
        default=DEFAULT_MIN_TISSUE_FRACTION,
        help="keep tiles with at least this fraction of non-glass pixels (default 0.5)",
    )
    args = parser.parse_args(argv)

    image = synthesize(SynthParams(args.image_px, args.image_px, seed=args.seed)).rgb
    tiles = tissue_tiles(image, args.min_tissue_fraction)
    if not tiles:
        raise SystemExit("no tissue tiles in the synthetic image; lower --min-tissue-fraction or change --seed")
    source = stats_from_images(tiles)
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, "
        f"{os.cpu_count()} CPUs, OpenCV threads {cv2.getNumThreads()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{len(tiles)} tissue tiles of {TILE_PX} px from a {args.image_px} px image, seed {args.seed}; "
        f"source Lab mean {_fmt(source.mean)} std {_fmt(source.std)}; target mean {_fmt(TARGET.mean)} "
        f"std {_fmt(TARGET.std)}; {args.reps} reps per arm, medians; "
        f"diffs in 8-bit levels against the float64 reference; goal: fast path >= {GOAL_SPEEDUP:g}x\n"
    )
    print(format_table(run(tiles, source, args.reps)))


if __name__ == "__main__":
    main()
