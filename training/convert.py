"""Turn a folder of annotations in any supported format into COCO + YOLO datasets, split by slide.

Per-image formats (QuPath GeoJSON, MITOS 2012 CSV, centroid CSV) pair each annotation file with
the image of the same stem in the image folder (size read from the image); their slide is the part
of the stem before the first "_" (MITOS "A00_01" -> "A00"), else the annotation file's folder name
(TUPAC "01/01.csv" -> "01"). The platform JSON, point lists and MIDOG JSON carry their own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2

from training.annotations import (
    AnnotatedImage,
    AnnotationError,
    read_centroid_csv,
    read_midog,
    read_mitos2012_csv,
    read_platform,
    read_points_csv,
    read_qupath_geojson,
)

FORMATS = ("platform", "qupath", "points", "mitos2012", "centroids", "midog")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_PER_IMAGE_READERS: dict[str, tuple[str, Callable[..., AnnotatedImage]]] = {
    "qupath": ("*.geojson", read_qupath_geojson),
    "mitos2012": ("*.csv", read_mitos2012_csv),
    "centroids": ("*.csv", read_centroid_csv),
}


def _image_for(annotation: Path, image_root: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (
            image_root / annotation.parent.name / f"{annotation.stem}{suffix}",
            image_root / f"{annotation.stem}{suffix}",
        ):
            if candidate.is_file():
                return candidate
    raise AnnotationError(f"{annotation}: no image named {annotation.stem}.* in {image_root}")


def _slide_of(annotation: Path) -> str:
    return annotation.stem.split("_", 1)[0] if "_" in annotation.stem else annotation.parent.name


def read_folder(
    fmt: str,
    source: Path,
    image_root: Path,
    mpp_um_per_px: float | None,
    point_columns: tuple[str, str, str, str] = ("patch", "mf_x_in_patch", "mf_y_in_patch", "slide"),
) -> list[AnnotatedImage]:
    """Every annotated image under `source` (a folder, or a single file for points / MIDOG)."""
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "platform":
        files = sorted(source.rglob("*.json")) if source.is_dir() else [source]
        return [read_platform(path) for path in files]
    if fmt == "midog":
        return read_midog(source, mpp_um_per_px or 0.25)
    if mpp_um_per_px is None:
        raise AnnotationError(f"the {fmt} format carries no resolution: pass --mpp")
    if fmt == "points":
        first = next((p for p in image_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if first is None:
            raise AnnotationError(f"{image_root}: no images")
        height, width = cv2.imread(str(first)).shape[:2]
        image_column, x_column, y_column, slide_column = point_columns
        return read_points_csv(source, image_column, x_column, y_column, slide_column, width, height, mpp_um_per_px)
    pattern, reader = _PER_IMAGE_READERS[fmt]
    images = []
    for annotation in sorted(source.rglob(pattern)):
        image_path = _image_for(annotation, image_root)
        pixels = cv2.imread(str(image_path))
        if pixels is None:
            raise AnnotationError(f"{image_path}: unreadable image")
        images.append(
            reader(
                annotation,
                str(image_path.relative_to(image_root)),
                _slide_of(annotation),
                pixels.shape[1],
                pixels.shape[0],
                mpp_um_per_px,
            )
        )
    if not images:
        raise AnnotationError(f"{source}: no {pattern} annotation files")
    return images
