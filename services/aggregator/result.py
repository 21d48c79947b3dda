"""The slide result: counts, density, hotspot, score, every detection, provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from services.aggregator.grading import DEFAULT_FIELD_DIAMETER_MM, mitotic_score
from services.aggregator.hotspot import Hotspot, find_hotspot
from services.aggregator.merge import ATYPICAL_CLASS, MITOTIC_CLASSES, SlideDetection
from services.tiler.tissue import TissueMask

RESULT_FORMAT = "mitoscope-result/1"


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


def result_document(
    slide: dict[str, Any],
    summary: SlideSummary,
    detections: list[SlideDetection],
    provenance: dict[str, Any],
    qc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The public result; `qc` is the tiler's quality-control report (checks, excluded tiles)."""
    hotspot = summary.hotspot
    document = {
        "format": RESULT_FORMAT,
        "slide": slide,
        "mitosis_count": summary.mitosis_count,
        "tissue_area_mm2": round(summary.tissue_area_mm2, 4),
        "density_per_mm2": round(summary.density_per_mm2, 4),
        "hotspot": {**asdict(hotspot), "count_per_mm2": round(hotspot.count_per_mm2, 4)},
        "mitotic_score": summary.mitotic_score,
        "atypical_count": summary.atypical_count,
        "atypical_fraction": round(summary.atypical_fraction, 4),
        "detections": [_detection(i + 1, d) for i, d in enumerate(detections)],
        "provenance": provenance,
    }
    if qc is not None:
        document["qc"] = qc
    return document


def _detection(number: int, d: SlideDetection) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": number,
        "x_px": round(d.x_px, 1),
        "y_px": round(d.y_px, 1),
        "box_px": [round(v, 1) for v in d.box_px],
        "score": round(d.score, 4),
        "class": d.class_name,
        "tile_index": d.tile_index,
    }
    if d.mitosis_probability is not None and d.atypical_probability is not None:
        doc["mitosis_probability"] = round(d.mitosis_probability, 4)
        doc["atypical_probability"] = round(d.atypical_probability, 4)
    return doc
