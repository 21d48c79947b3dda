"""The embedded pipeline: one slide in, a scored result and its exports out, in one process.

Each stage is the plain function its service owns; the services call the same functions.
Outputs are written to a temporary folder beside `out_dir` and moved into place only when all
of them exist, so a failed run never leaves a result that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.aggregator import exports
from services.aggregator.grading import thresholds_for
from services.aggregator.merge import merge_tile_detections
from services.aggregator.result import build_result, make_provenance, parameters_of, summarise, timing_of
from services.aggregator.schema import ModelProvenance, SlideFacts
from services.common.options import ScoreOptions
from services.detector.detector import Detector
from services.detector.postprocess import TileDetections
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images, stats_sample_indices
from services.tiler.grid import TilePlan
from services.tiler.planning import plan_slide
from services.tiler.qc import SlideQc
from services.tiler.reader import ReadGeometry, read_batches, read_tile
from services.tiler.slide import Slide, open_slide, resolve_mpp
from services.tiler.tissue import TissueMask

log = logging.getLogger(__name__)

GALLERY_CROP_PX = 160
GALLERY_MAX_CROPS = 48


ProgressCallback = Callable[[int, int], None]  # (tiles done, tiles total)


@dataclass
class PreparedSlide:
    slide: Slide
    mpp_um_per_px: float
    mpp_source: str
    tissue: TissueMask
    plan: TilePlan
    overview: np.ndarray
    qc: SlideQc


def prepare_slide(path: Path, options: ScoreOptions, model_mpp_um_per_px: float, tile_px: int) -> PreparedSlide:
    """Open, resolve resolution, find tissue and lay the tile grid (the tiler's work)."""
    thresholds_for(options.field_diameter_mm)  # refuse a bad parameter before any work
    slide = open_slide(path)
    try:
        mpp = resolve_mpp(slide.info, options.mpp_override_um_per_px)
        planned = plan_slide(slide, mpp, model_mpp_um_per_px, tile_px, options.overlap_px)
    except BaseException:
        slide.close()
        raise
    source = "override" if options.mpp_override_um_per_px is not None else "metadata"
    return PreparedSlide(slide, mpp, source, planned.tissue, planned.plan, planned.overview, planned.qc)


def slide_colour_stats(slide: Slide, plan: TilePlan) -> LabStats:
    """Source Lab statistics over tissue, from tiles spread evenly across the plan."""
    geometry = ReadGeometry.for_plan(slide, plan)
    sample = [plan.tiles[i] for i in stats_sample_indices(len(plan.tiles))]
    return stats_from_images([read_tile(slide, plan, geometry, tile) for tile in sample])


def score_slide(
    path: Path,
    out_dir: Path,
    detector: Detector,
    options: ScoreOptions = ScoreOptions(),
    progress: ProgressCallback | None = None,
    display_name: str | None = None,
) -> dict[str, Any]:
    """Score one slide and write result.json, result.geojson, result.csv, overview.png."""
    started = time.perf_counter()
    info = detector.info
    prepared = prepare_slide(path, options, info.mpp_um_per_px, info.input_size_px)
    slide, plan = prepared.slide, prepared.plan
    with slide:
        source_stats = slide_colour_stats(slide, plan)
        target = LabStats.from_dict(info.reinhard_target_lab)
        normalise = ReinhardNormaliser(source_stats, target)
        score_threshold = info.score_threshold if options.score_threshold is None else options.score_threshold
        per_tile: dict[int, TileDetections] = {}
        done = 0
        if progress:
            progress(0, len(plan.tiles))
        for batch in read_batches(slide, plan, options.batch_size):
            decoded = detector.detect(normalise(batch.pixels), score_threshold)
            for tile, tile_detections in zip(batch.tiles, decoded, strict=True):
                per_tile[tile.index] = tile_detections
            done += len(batch.tiles)
            if progress:
                progress(done, len(plan.tiles))
        detections = merge_tile_detections(plan, per_tile, info.class_names, options.merge_radius_um)
        summary = summarise(
            detections,
            slide.info.width_px,
            slide.info.height_px,
            prepared.mpp_um_per_px,
            prepared.tissue,
            options.field_diameter_mm,
        )
        facts = SlideFacts(
            name=display_name or path.name,
            width_px=slide.info.width_px,
            height_px=slide.info.height_px,
            mpp_um_per_px=prepared.mpp_um_per_px,
            mpp_source=prepared.mpp_source,
            vendor=slide.info.vendor,
            reader=slide.info.backend,
        )
        model = ModelProvenance(
            name=info.name,
            version=info.version,
            sha256=info.sha256,
            input_size_px=info.input_size_px,
            mpp_um_per_px=info.mpp_um_per_px,
            class_names=list(info.class_names),
            backend=detector.description,
        )
        elapsed_s = time.perf_counter() - started
        timing = timing_of(elapsed_s, len(plan.tiles))
        with_detections = sum(1 for found in per_tile.values() if len(found))
        provenance = make_provenance(
            model, source_stats, target, parameters_of(options, score_threshold), plan, with_detections, timing
        )
        result = build_result(facts, summary, detections, provenance, prepared.qc.to_dict()).document()
        gallery = _gallery_crops(slide, result) if options.gallery else None
    _write_outputs(out_dir, result, prepared.overview, gallery)
    return result


def _gallery_crops(slide: Slide, result: dict[str, Any]) -> list[tuple[np.ndarray, float]]:
    mpp = result["slide"]["mpp_um_per_px"]
    model_mpp = result["provenance"]["model"]["mpp_um_per_px"]
    half = GALLERY_CROP_PX / 2 * model_mpp / mpp
    crops = []
    for det in sorted(result["detections"], key=lambda d: -d["score"])[:GALLERY_MAX_CROPS]:
        x0, y0 = round(det["x_px"] - half), round(det["y_px"] - half)
        size = max(1, round(2 * half))
        crop = cv2.resize(slide.read_region(x0, y0, 0, size, size), (GALLERY_CROP_PX, GALLERY_CROP_PX))
        k = GALLERY_CROP_PX / size
        bx0, by0, bx1, by1 = det["box_px"]
        cv2.rectangle(
            crop,
            (round((bx0 - x0) * k), round((by0 - y0) * k)),
            (round((bx1 - x0) * k), round((by1 - y0) * k)),
            (220, 20, 20),
            2,
        )
        crops.append((crop, det["score"]))
    return crops


def _write_outputs(
    out_dir: Path, result: dict[str, Any], overview: np.ndarray, gallery: list[tuple[np.ndarray, float]] | None
) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        exports.write_json(result, staging / "result.json")
        exports.write_geojson(result, staging / "result.geojson")
        exports.write_csv(result, staging / "result.csv")
        exports.write_png(exports.render_overview(result, overview), staging / "overview.png")
        if gallery is not None:
            exports.write_png(exports.render_gallery(gallery), staging / "gallery.png")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
