"""Annotation formats in, one internal form out: figures with a label, per image, per slide.

Readers (each names the file and the record on bad input, raising `AnnotationError`):
- the platform format: per-tile JSON with ellipses (`PlatformTile`, JSON Schema in
  `training/schemas/platform_tile.schema.json`), as the CADD4MBC platform exports and our web UI
  writes;
- QuPath GeoJSON (points, polygons and rectangles classified "Mitosis" / "Imposter");
- point lists such as AMi-Br's `amibr_patch_points.csv`;
- ICPR 2012 MITOS: one CSV per image, each line the pixel list of one mitosis (x, y pairs);
- MITOS-ATYPIA-14 and TUPAC16: one centroid CSV per image (row, column[, confidence]);
- MIDOG: COCO-style JSON with boxes per image and a hard-negative "imposter" category.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LABELS = ("mitosis", "imposter")
_LABEL_ALIASES = {
    "mitosis": "mitosis",
    "mitotic figure": "mitosis",
    "mitotic_figure": "mitosis",
    "mf": "mitosis",
    "imposter": "imposter",
    "hard negative": "imposter",
    "non-mitotic figure": "imposter",
    "nonmitotic figure": "imposter",
    "non_mitosis": "imposter",
    "non-mitosis": "imposter",
}


class AnnotationError(ValueError):
    """An annotation file cannot be used; the message names the file and the record."""


def normalise_label(raw: str, where: str) -> str:
    label = _LABEL_ALIASES.get(raw.strip().lower())
    if label is None:
        raise AnnotationError(f"{where}: unknown label {raw!r}; expected one of {', '.join(LABELS)} (or an alias)")
    return label


@dataclass(frozen=True)
class Figure:
    """One annotated figure in image pixels: an ellipse, a polygon's box, or a point."""

    label: str
    cx_px: float
    cy_px: float
    kind: Literal["ellipse", "box", "point"]
    semi_axes_px: tuple[float, float] = (0.0, 0.0)  # ellipse only
    angle_deg: float = 0.0  # ellipse only
    box_px: tuple[float, float, float, float] | None = None  # box only
    annotator: str | None = None


@dataclass(frozen=True)
class AnnotatedImage:
    image: str  # path relative to the dataset root, or a name
    slide: str  # source slide / case: the unit of splitting
    width_px: int
    height_px: int
    mpp_um_per_px: float
    figures: tuple[Figure, ...]


class PlatformEllipse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cx_px: float = Field(description="ellipse centre, tile pixels")
    cy_px: float
    semi_major_px: float = Field(gt=0)
    semi_minor_px: float = Field(gt=0)
    angle_deg: float = Field(default=0.0, description="rotation of the major axis, degrees clockwise from x")
    label: str
    annotator: str | None = None


class PlatformTile(BaseModel):
    """One tile's annotations as the platform exports them."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["mitoscope-platform/1"] = "mitoscope-platform/1"
    image: str = Field(description="tile image file, relative to this JSON file")
    slide: str = Field(description="source slide or case id; splits never separate one slide")
    width_px: int = Field(gt=0)
    height_px: int = Field(gt=0)
    mpp_um_per_px: float = Field(gt=0, le=4.0)
    annotations: list[PlatformEllipse]

    @model_validator(mode="after")
    def _centres_inside(self) -> PlatformTile:
        for i, e in enumerate(self.annotations):
            if not (0 <= e.cx_px < self.width_px and 0 <= e.cy_px < self.height_px):
                raise ValueError(
                    f"annotations[{i}]: centre ({e.cx_px}, {e.cy_px}) lies outside the "
                    f"{self.width_px} x {self.height_px} px tile"
                )
        return self


def read_platform(path: Path) -> AnnotatedImage:
    try:
        tile = PlatformTile.model_validate_json(path.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise AnnotationError(f"{path}: {where}: {first['msg']} ({e.error_count()} problem(s) in all)") from e
    figures = tuple(
        Figure(
            normalise_label(a.label, f"{path}: annotations[{i}]"),
            a.cx_px,
            a.cy_px,
            "ellipse",
            (a.semi_major_px, a.semi_minor_px),
            a.angle_deg,
            annotator=a.annotator,
        )
        for i, a in enumerate(tile.annotations)
    )
    return AnnotatedImage(tile.image, tile.slide, tile.width_px, tile.height_px, tile.mpp_um_per_px, figures)


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not valid JSON: {e}") from e


def read_qupath_geojson(
    path: Path, image: str, slide: str, width_px: int, height_px: int, mpp_um_per_px: float
) -> AnnotatedImage:
    """Features classified Mitosis / Imposter; points become points, shapes become boxes."""
    doc = _load_json(path)
    features = doc.get("features") if isinstance(doc, dict) else doc
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: expected a FeatureCollection or a list of features")
    figures = []
    for i, feature in enumerate(features):
        where = f"{path}: features[{i}]"
        try:
            geometry = feature["geometry"]
            name = feature["properties"]["classification"]["name"]
        except (KeyError, TypeError) as e:
            raise AnnotationError(f"{where}: missing geometry or properties.classification.name") from e
        label = normalise_label(name, where)
        if geometry["type"] == "Point":
            x, y = geometry["coordinates"][:2]
            figures.append(Figure(label, float(x), float(y), "point"))
        elif geometry["type"] in ("Polygon", "MultiPolygon"):
            rings = geometry["coordinates"] if geometry["type"] == "Polygon" else geometry["coordinates"][0]
            xs = [float(p[0]) for p in rings[0]]
            ys = [float(p[1]) for p in rings[0]]
            box = (min(xs), min(ys), max(xs), max(ys))
            figures.append(Figure(label, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, "box", box_px=box))
        else:
            raise AnnotationError(f"{where}: unsupported geometry {geometry['type']!r}")
    return AnnotatedImage(image, slide, width_px, height_px, mpp_um_per_px, tuple(figures))


def read_points_csv(
    path: Path,
    image_column: str,
    x_column: str,
    y_column: str,
    slide_column: str,
    width_px: int,
    height_px: int,
    mpp_um_per_px: float,
    label_column: str | None = None,
) -> list[AnnotatedImage]:
    """A point list with one row per figure (e.g. AMi-Br's patch points), grouped by image."""
    by_image: dict[str, list[Figure]] = {}
    slides: dict[str, str] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {image_column, x_column, y_column, slide_column} - set(reader.fieldnames or [])
        if missing:
            raise AnnotationError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            where = f"{path}: line {line}"
            try:
                x, y = float(row[x_column]), float(row[y_column])
            except ValueError as e:
                raise AnnotationError(f"{where}: coordinates are not numbers") from e
            label = normalise_label(row[label_column], where) if label_column else "mitosis"
            by_image.setdefault(row[image_column], []).append(Figure(label, x, y, "point"))
            slides[row[image_column]] = row[slide_column]
    return [
        AnnotatedImage(image, slides[image], width_px, height_px, mpp_um_per_px, tuple(figs))
        for image, figs in sorted(by_image.items())
    ]


def read_mitos2012_csv(
    path: Path, image: str, slide: str, width_px: int, height_px: int, mpp_um_per_px: float
) -> AnnotatedImage:
    """ICPR 2012 MITOS: each line lists one mitosis's pixels as x1,y1,x2,y2,..."""
    figures = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split(",") if v.strip()]
        except ValueError as e:
            raise AnnotationError(f"{path}: line {line_no}: not a list of numbers") from e
        if len(values) < 2 or len(values) % 2:
            raise AnnotationError(f"{path}: line {line_no}: expected x,y pairs, got {len(values)} values")
        xs, ys = values[0::2], values[1::2]
        box = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
        figures.append(Figure("mitosis", sum(xs) / len(xs), sum(ys) / len(ys), "box", box_px=box))
    return AnnotatedImage(image, slide, width_px, height_px, mpp_um_per_px, tuple(figures))


def read_centroid_csv(
    path: Path, image: str, slide: str, width_px: int, height_px: int, mpp_um_per_px: float, min_confidence: float = 0.0
) -> AnnotatedImage:
    """MITOS-ATYPIA-14 / TUPAC16: one line per mitosis, `row,column[,confidence]` (row = y)."""
    figures = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split(",")]
        except ValueError as e:
            raise AnnotationError(f"{path}: line {line_no}: not numbers: {line!r}") from e
        if len(values) not in (2, 3):
            raise AnnotationError(f"{path}: line {line_no}: expected row,column[,confidence]")
        if len(values) == 3 and values[2] < min_confidence:
            continue
        figures.append(Figure("mitosis", values[1], values[0], "point"))
    return AnnotatedImage(image, slide, width_px, height_px, mpp_um_per_px, tuple(figures))


def read_midog(path: Path, mpp_um_per_px: float = 0.25) -> list[AnnotatedImage]:
    """MIDOG's COCO-style JSON: images, categories (mitotic figure, hard negative), bbox per figure."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not {"images", "annotations", "categories"} <= set(doc):
        raise AnnotationError(f"{path}: expected COCO-style keys images, annotations, categories")
    categories = {c["id"]: normalise_label(c["name"], f"{path}: category {c['id']}") for c in doc["categories"]}
    images = {}
    for img in doc["images"]:
        images[img["id"]] = img
    figures: dict[int, list[Figure]] = {i: [] for i in images}
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{i}]"
        if ann.get("image_id") not in images:
            raise AnnotationError(f"{where}: image_id {ann.get('image_id')!r} is not among the images")
        if ann.get("category_id") not in categories:
            raise AnnotationError(f"{where}: unknown category_id {ann.get('category_id')!r}")
        x0, y0, x1, y1 = (float(v) for v in ann["bbox"])  # MIDOG stores x0, y0, x1, y1
        if x1 <= x0 or y1 <= y0:
            raise AnnotationError(f"{where}: empty box {ann['bbox']}")
        figures[ann["image_id"]].append(
            Figure(categories[ann["category_id"]], (x0 + x1) / 2, (y0 + y1) / 2, "box", box_px=(x0, y0, x1, y1))
        )
    return [
        AnnotatedImage(
            img["file_name"],
            str(img.get("slide", img["file_name"])),
            int(img["width"]),
            int(img["height"]),
            float(img.get("mpp", mpp_um_per_px)),
            tuple(figures[i]),
        )
        for i, img in sorted(images.items())
    ]


def ellipse_area_um2(figure: Figure, mpp_um_per_px: float) -> float:
    return math.pi * figure.semi_axes_px[0] * figure.semi_axes_px[1] * mpp_um_per_px**2


def write_schema(path: Path) -> None:
    """Regenerate the platform format's JSON Schema: `python -m training.annotations`."""
    path.write_text(json.dumps(PlatformTile.model_json_schema(), indent=1) + "\n")


if __name__ == "__main__":
    write_schema(Path(__file__).with_name("schemas") / "platform_tile.schema.json")
