"""The slide result: counts, density, hotspot, score, every detection, provenance (typed in `schema.py`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from services.aggregator.grading import DEFAULT_FIELD_DIAMETER_MM, mitotic_score
from services.aggregator.hotspot import Hotspot, find_hotspot
from services.aggregator.merge import ATYPICAL_CLASS, MITOTIC_CLASSES, SlideDetection
from services.aggregator.schema import (
    Detection,
    HotspotResult,
    LabStatsDocument,
    ModelProvenance,
    Normalisation,
    Parameters,
    Provenance,
    QcReport,
    SlideFacts,
    SlideResult,
    Tiles,
    Timing,
)
from services.common.files import code_version
from services.common.options import ScoreOptions
from services.preprocess.reinhard import LabStats
from services.tiler.grid import TilePlan
from services.tiler.tissue import TissueMask


@dataclass(frozen=True)
class SlideSummary:
    mitosis_count: int
    tissue_area_mm2: float
    density_per_mm2: float
    hotspot: Hotspot
    mitotic_score: int
    atypical_count: int = 0

    @property
    def atypical_fraction(self) -> float:
        return self.atypical_count / self.mitosis_count if self.mitosis_count else 0.0


def summarise(
    detections: list[SlideDetection],
    slide_width_px: int,
    slide_height_px: int,
    mpp_um_per_px: float,
    tissue: TissueMask,
    field_diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM,
) -> SlideSummary:
    mitoses = [d for d in detections if d.class_name in MITOTIC_CLASSES]
    hotspot = find_hotspot(mitoses, slide_width_px, slide_height_px, mpp_um_per_px, tissue, field_diameter_mm)
    tissue_mm2 = tissue.area_mm2
    return SlideSummary(
        mitosis_count=len(mitoses),
        tissue_area_mm2=tissue_mm2,
        density_per_mm2=len(mitoses) / tissue_mm2 if tissue_mm2 > 0 else 0.0,
        hotspot=hotspot,
        mitotic_score=mitotic_score(hotspot.count, field_diameter_mm),
        atypical_count=sum(d.class_name == ATYPICAL_CLASS for d in mitoses),
    )


def build_result(
    slide: SlideFacts,
    summary: SlideSummary,
    detections: list[SlideDetection],
    provenance: Provenance,
    qc: dict[str, Any],
) -> SlideResult:
    """The public result, the same for the embedded pipeline and the aggregator service; `qc` is the
    tiler's quality-control report (`SlideQc.to_dict()`)."""
    hotspot = summary.hotspot
    return SlideResult(
        slide=slide,
        mitosis_count=summary.mitosis_count,
        tissue_area_mm2=round(summary.tissue_area_mm2, 4),
        density_per_mm2=round(summary.density_per_mm2, 4),
        hotspot=HotspotResult(**asdict(hotspot), count_per_mm2=round(hotspot.count_per_mm2, 4)),
        mitotic_score=summary.mitotic_score,
        atypical_count=summary.atypical_count,
        atypical_fraction=round(summary.atypical_fraction, 4),
        detections=[_detection(i + 1, d) for i, d in enumerate(detections)],
        qc=QcReport.model_validate(qc),
        provenance=provenance,
    )


def _detection(number: int, d: SlideDetection) -> Detection:
    return Detection.model_validate(
        {
            "id": number,
            "x_px": round(d.x_px, 1),
            "y_px": round(d.y_px, 1),
            "box_px": [round(v, 1) for v in d.box_px],
            "score": round(d.score, 4),
            "class": d.class_name,
            "tile_index": d.tile_index,
            "mitosis_probability": None if d.mitosis_probability is None else round(d.mitosis_probability, 4),
            "atypical_probability": None if d.atypical_probability is None else round(d.atypical_probability, 4),
        }
    )


def parameters_of(options: ScoreOptions, score_threshold: float) -> Parameters:
    """The run's parameters as recorded; `score_threshold` is the one used."""
    return Parameters(
        mpp_override_um_per_px=options.mpp_override_um_per_px,
        batch_size=options.batch_size,
        overlap_px=options.overlap_px,
        score_threshold=score_threshold,
        merge_radius_um=options.merge_radius_um,
        field_diameter_mm=options.field_diameter_mm,
    )


def make_provenance(
    model: ModelProvenance,
    source_lab: LabStats,
    target_lab: LabStats,
    parameters: Parameters,
    plan: TilePlan,
    tiles_with_detections: int,
    timing: Timing | None = None,
) -> Provenance:
    return Provenance(
        code_version=code_version(),
        model=model,
        normalisation=Normalisation(
            target_lab=LabStatsDocument(**asdict(target_lab)), source_lab=LabStatsDocument(**asdict(source_lab))
        ),
        parameters=parameters,
        tiles=Tiles(
            total=len(plan.tiles),
            with_detections=tiles_with_detections,
            tile_px=plan.tile_px,
            overlap_px=plan.overlap_px,
            rows=plan.rows,
            cols=plan.cols,
        ),
        timing=timing,
    )


def timing_of(seconds: float, tiles: int) -> Timing:
    """How long a whole slide took, and its tiles per second over that time."""
    return Timing(seconds=round(seconds, 2), tiles_per_s=round(tiles / max(seconds, 1e-9), 2))
