"""How a slide is scored, with every default in one place: the CLI, the embedded pipeline, the jobs
API and the workers all start from `ScoreOptions()` (light to import: no numpy, no OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass

from services.detector.model import DEFAULT_CLASSIFIER_NAME, DEFAULT_MODEL_NAME

DEFAULT_BATCH_SIZE = 150  # tiles per batch, as in the paper
DEFAULT_OVERLAP_PX = 96  # 24 µm at 0.25 µm/px: wider than the largest mitotic figure (~15 µm)
DEFAULT_MERGE_RADIUS_UM = 7.5  # detections closer than the MIDOG match radius are one figure
DEFAULT_FIELD_DIAMETER_MM = 0.55  # the microscope field of the CAP table's middle row

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CLASSIFIER_NAME",
    "DEFAULT_FIELD_DIAMETER_MM",
    "DEFAULT_MERGE_RADIUS_UM",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_OVERLAP_PX",
    "ScoreOptions",
]


@dataclass(frozen=True)
class ScoreOptions:
    mpp_override_um_per_px: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    overlap_px: int = DEFAULT_OVERLAP_PX
    score_threshold: float | None = None  # None: the threshold the model was validated with
    merge_radius_um: float = DEFAULT_MERGE_RADIUS_UM
    field_diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM
    gallery: bool = False
