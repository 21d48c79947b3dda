"""Tiling throughput: our tiler (`read_batches`) against raw OpenSlide `read_region` on the same grid.

A synthetic slide is written to a temporary folder and planned exactly as the pipeline does
(`prepare_slide`). The baseline reads the same level-0 regions, in plan order, on one thread,
with `openslide.OpenSlide.read_region` and `np.asarray` (no RGB conversion, no resampling).
Repetitions alternate baseline and candidate after one untimed warm-up of each; the table gives
medians and the median of the per-repetition ratios. Nothing is asserted.

    python -m bench.tiling [--reps 5] [--mpp 0.25 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide

from mitoscope.pipeline import ScoreOptions, prepare_slide
from mitoscope.slide_files import make_slide
from mitoscope.synth import SynthParams
from services.tiler.grid import TilePlan
from services.tiler.reader import ReadGeometry, read_batches
from services.tiler.slide import Slide

MODEL_MPP_UM_PER_PX = 0.25
TILE_PX = 512
DEFAULT_BATCH_SIZE = 150
DEFAULT_SIZE_PX = 8192
DEFAULT_SEED = 1
DEFAULT_REPS = 5
GOAL_RATIO = 0.9


@dataclass(frozen=True)
class TilingResult:
    mpp_um_per_px: float
    tiles: int
    read_px: int
    baseline_tiles_per_s: float
    candidate_tiles_per_s: float
    ratio: float  # median of per-repetition candidate / baseline
    ratio_min: float
    ratio_max: float


def run_candidate(slide: Slide, plan: TilePlan, batch_size: int) -> int:
    """Iterate the tiler's batches; returns the number of tiles read."""
    count = 0
    for batch in read_batches(slide, plan, batch_size=batch_size):
        count += batch.pixels.shape[0]
    return count


def run_baseline(handle: openslide.OpenSlide, plan: TilePlan, read_px: int) -> int:
    """Raw `read_region` at level 0 over the same origins, plan order, one thread."""
    scale = plan.level0_px_per_tile_px
    count = 0
    for tile in plan.tiles:
        x0, y0 = tile.level0_origin(scale)
        np.asarray(handle.read_region((round(x0), round(y0)), 0, (read_px, read_px)))
        count += 1
    return count


def _tiles_per_s(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def bench_slide(path: Path, reps: int, batch_size: int) -> TilingResult:
    """Plan `path` as the pipeline does, then time baseline and candidate alternately."""
    prepared = prepare_slide(path, ScoreOptions(), model_mpp_um_per_px=MODEL_MPP_UM_PER_PX, tile_px=TILE_PX)
    slide, plan = prepared.slide, prepared.plan
    geometry = ReadGeometry.for_plan(slide, plan)
    if geometry.level != 0:
        raise SystemExit(f"expected a level-0 read plan, got level {geometry.level}")
    handle = openslide.OpenSlide(str(path))
    try:

        def baseline() -> int:
            return run_baseline(handle, plan, geometry.read_px)

        def candidate() -> int:
            return run_candidate(slide, plan, batch_size)

        baseline()  # warm-up: page cache and code paths
        candidate()
        base_rates: list[float] = []
        cand_rates: list[float] = []
        for _ in range(reps):
            base_rates.append(_tiles_per_s(baseline))
            cand_rates.append(_tiles_per_s(candidate))
    finally:
        handle.close()
        slide.close()
    ratios = [c / b for b, c in zip(base_rates, cand_rates, strict=True)]
    return TilingResult(
        mpp_um_per_px=prepared.mpp_um_per_px,
        tiles=len(plan.tiles),
        read_px=geometry.read_px,
        baseline_tiles_per_s=statistics.median(base_rates),
        candidate_tiles_per_s=statistics.median(cand_rates),
        ratio=statistics.median(ratios),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
    )


def format_table(results: list[TilingResult]) -> str:
    lines = [
        "| slide mpp (µm/px) | tiles | level-0 read (px) | OpenSlide read_region (tiles/s) "
        "| read_batches (tiles/s) | ratio (min–max) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.mpp_um_per_px:g} | {r.tiles} | {r.read_px} | {r.baseline_tiles_per_s:.0f} "
            f"| {r.candidate_tiles_per_s:.0f} | {r.ratio:.2f} ({r.ratio_min:.2f}–{r.ratio_max:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="timed repetitions per arm (default 5)")
    parser.add_argument("--size-px", type=int, default=DEFAULT_SIZE_PX, help="synthetic slide side (default 8192)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="synthetic slide seed (default 1)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="tiles per batch (default 150)")
    parser.add_argument(
        "--mpp",
        type=float,
        nargs="+",
        default=[0.25, 0.5],
        help="slide resolutions to test, µm/px (default 0.25 0.5; 0.5 exercises resampling)",
    )
    args = parser.parse_args(argv)

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, openslide-python {openslide.__version__}, "
        f"OpenSlide {openslide.__library_version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"slide {args.size_px} x {args.size_px} px, seed {args.seed}; model {MODEL_MPP_UM_PER_PX} µm/px, "
        f"tile {TILE_PX} px; batch {args.batch_size}; {args.reps} reps per arm, medians; "
        f"goal: ratio >= {GOAL_RATIO}\n"
    )
    results: list[TilingResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-tiling-") as tmp:
        for mpp in args.mpp:
            path = Path(tmp) / f"synth-{mpp:g}.tiff"
            make_slide(
                path, SynthParams(width_px=args.size_px, height_px=args.size_px, seed=args.seed, mpp_um_per_px=mpp)
            )
            results.append(bench_slide(path, args.reps, args.batch_size))
    print(format_table(results))


if __name__ == "__main__":
    main()
