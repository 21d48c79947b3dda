"""The public slide result (`result.json`), as one typed model.

Both paths build it with `services.aggregator.result.build_result`: the embedded pipeline in one
process, and the aggregator service for jobs that run over HTTP. The aggregator answers it as
JSON, the gateway stores and serves it (its OpenAPI schema is this model), so a slide scored
either way gives the same document apart from timing and the backend description.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SlideFacts(_Strict):
    name: str
    width_px: int
    height_px: int
    mpp_um_per_px: float
    mpp_source: str = Field(description="metadata, or override when the caller gave the MPP")
    vendor: str
    reader: str


class HotspotResult(_Strict):
    x_px: float = Field(description="top-left, level-0 pixels")
    y_px: float
    width_px: float
    height_px: float
    count: int
    window_area_mm2: float
    tissue_area_mm2: float
    fields: int
    field_diameter_mm: float
    count_per_mm2: float


class Detection(_Strict):
    id: int
    x_px: float = Field(description="centre, level-0 pixels")
    y_px: float
    box_px: list[float] = Field(description="x0, y0, x1, y1 in level-0 pixels")
    score: float = Field(description="the detector's confidence")
    class_name: str = Field(alias="class", description="mitosis or atypical_mitosis")
    tile_index: int
    mitosis_probability: float | None = Field(default=None, description="the second stage's; null without one")
    atypical_probability: float | None = None


class ModelProvenance(_Strict):
    name: str
    version: str
    sha256: str
    input_size_px: int
    mpp_um_per_px: float
    class_names: list[str]
    backend: str


class LabStatsDocument(_Strict):
    mean: list[float]
    std: list[float]


class Normalisation(_Strict):
    method: Literal["reinhard"] = "reinhard"
    target_lab: LabStatsDocument
    source_lab: LabStatsDocument


class Parameters(_Strict):
    """Every parameter of the run; `score_threshold` is the one used (the model's when not given)."""

    mpp_override_um_per_px: float | None
    batch_size: int
    overlap_px: int
    score_threshold: float
    merge_radius_um: float
    field_diameter_mm: float


class Tiles(_Strict):
    total: int
    with_detections: int
    tile_px: int
    overlap_px: int
    rows: int
    cols: int


class Timing(_Strict):
    seconds: float
    tiles_per_s: float


class Provenance(_Strict):
    code_version: str
    model: ModelProvenance
    normalisation: Normalisation
    parameters: Parameters
    tiles: Tiles
    timing: Timing | None = Field(default=None, description="set by whoever ran the whole slide")


class QcExcluded(_Strict):
    reason: Literal["blur", "pen"]
    area_mm2: float
    tiles: int
    tile_rows_cols: list[list[int]]
    boxes_level0_px: list[list[float]]


class QcReport(_Strict):
    verdict: Literal["ok"]
    checks: dict[str, float | int | None]
    thresholds: dict[str, float]
    excluded: list[QcExcluded]
    excluded_area_mm2: float


class SlideResult(_Strict):
    format: Literal["mitoscope-result/1"] = "mitoscope-result/1"
    slide: SlideFacts
    mitosis_count: int
    tissue_area_mm2: float
    density_per_mm2: float = Field(description="mitoses per mm² of scored tissue")
    hotspot: HotspotResult
    mitotic_score: int = Field(ge=1, le=3, description="Nottingham mitotic score from the CAP table")
    atypical_count: int
    atypical_fraction: float
    detections: list[Detection]
    qc: QcReport
    provenance: Provenance
    exports: dict[str, str] | None = Field(default=None, description="file name -> where it was written")

    def document(self) -> dict[str, object]:
        """The JSON document (`result.json`), with `class` as the detections' key; `exports` only
        once something was exported."""
        return self.model_dump(mode="json", by_alias=True, exclude={"exports"} if self.exports is None else None)
