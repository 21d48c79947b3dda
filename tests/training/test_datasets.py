"""Annotation readers and dataset converters on constructed cases."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from services.common.files import REPO_ROOT
from training.annotations import (
    AnnotatedImage,
    AnnotationError,
    Figure,
    PlatformTile,
    read_centroid_csv,
    read_midog,
    read_mitos2012_csv,
    read_platform,
    read_points_csv,
    read_qupath_geojson,
)
from training.datasets import coco_document, image_boxes, split_by_slide, write_dataset, yolo_lines

SCHEMA_PATH = REPO_ROOT / "training" / "schemas" / "platform_tile.schema.json"


def _platform_doc(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "format": "mitoscope-platform/1",
        "image": "tile.png",
        "slide": "case-1",
        "width_px": 512,
        "height_px": 512,
        "mpp_um_per_px": 0.25,
        "annotations": [
            {
                "cx_px": 100,
                "cy_px": 120,
                "semi_major_px": 20,
                "semi_minor_px": 12,
                "angle_deg": 30,
                "label": "mitosis",
                "annotator": "path-A",
            },
            {"cx_px": 300, "cy_px": 300, "semi_major_px": 2, "semi_minor_px": 2, "label": "mitosis"},
            {"cx_px": 400, "cy_px": 50, "semi_major_px": 15, "semi_minor_px": 15, "label": "Imposter"},
        ],
    }
    doc.update(overrides)
    return doc


def _write(tmp_path: Path, name: str, doc: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_schema_file_is_current_and_validates_the_example(tmp_path: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema == PlatformTile.model_json_schema(), "regenerate training/schemas/platform_tile.schema.json"
    jsonschema.validate(_platform_doc(), schema)


def test_platform_ellipses_become_mask_boxes_and_tiny_ones_are_dropped(tmp_path: Path) -> None:
    image = read_platform(_write(tmp_path, "t.json", _platform_doc()))
    assert [f.label for f in image.figures] == ["mitosis", "mitosis", "imposter"]
    boxes = image_boxes(image, min_area_um2=10.0)
    assert [b.label for b in boxes] == ["mitosis", "imposter"]  # the 2 px ellipse is 0.8 µm²
    mask = np.zeros((512, 512), np.uint8)
    cv2.ellipse(mask, (100, 120), (20, 12), 30, 0, 360, 1, -1)
    ys, xs = np.nonzero(mask)
    assert (boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"annotations": [{"cx_px": 600, "cy_px": 10, "semi_major_px": 5, "semi_minor_px": 5, "label": "mitosis"}]},
            "outside the 512 x 512 px tile",
        ),
        (
            {"annotations": [{"cx_px": 60, "cy_px": 10, "semi_major_px": -5, "semi_minor_px": 5, "label": "mitosis"}]},
            "annotations.0.semi_major_px",
        ),
        (
            {"annotations": [{"cx_px": 60, "cy_px": 10, "semi_major_px": 5, "semi_minor_px": 5, "label": "tumour"}]},
            "unknown label 'tumour'",
        ),
        ({"width_px": "wide"}, "width_px"),
    ],
)
def test_bad_platform_files_name_the_file_and_record(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = _write(tmp_path, "bad.json", _platform_doc(**change))
    with pytest.raises(AnnotationError, match=message) as info:
        read_platform(path)
    assert "bad.json" in str(info.value)


def test_malformed_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"features": [')
    with pytest.raises(AnnotationError, match=r"broken\.json: not valid JSON"):
        read_qupath_geojson(path, "x.png", "s", 100, 100, 0.25)


def test_qupath_points_and_polygons(tmp_path: Path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [50, 60]},
                "properties": {"classification": {"name": "Mitosis"}},
            },
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [40, 10], [40, 30], [10, 30], [10, 10]]]},
                "properties": {"objectType": "detection", "classification": {"name": "Mitosis"}},
            },
        ],
    }
    image = read_qupath_geojson(_write(tmp_path, "q.geojson", doc), "x.png", "s", 100, 100, 0.25)
    boxes = image_boxes(image, point_box_um=12.5)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(25, 35, 75, 85), (10, 10, 40, 30)]


def test_public_dataset_formats(tmp_path: Path) -> None:
    mitos = tmp_path / "A00_01.csv"
    mitos.write_text("10,20,11,20,12,21\n100,100,101,101\n")
    image = read_mitos2012_csv(mitos, "A00_01.bmp", "A00", 2084, 2084, 0.2456)
    assert [f.box_px for f in image.figures] == [(10, 20, 13, 22), (100, 100, 102, 102)]
    tupac = tmp_path / "01.csv"
    tupac.write_text("120,340\n500,60,0.4\n")
    image = read_centroid_csv(tupac, "01.tif", "TUPAC-01", 2000, 2000, 0.25, min_confidence=0.5)
    assert [(f.cx_px, f.cy_px) for f in image.figures] == [(340, 120)]
    midog = {
        "images": [{"id": 1, "file_name": "001.tiff", "width": 7000, "height": 5000}],
        "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "hard negative"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 150, 150]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [300, 300, 350, 350]},
        ],
    }
    (image,) = read_midog(_write(tmp_path, "midog.json", midog))
    assert [f.label for f in image.figures] == ["mitosis", "imposter"]
    midog["annotations"].append({"id": 3, "image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5]})  # type: ignore[attr-defined]
    with pytest.raises(AnnotationError, match=r"annotations\[2\]: image_id 9"):
        read_midog(_write(tmp_path, "midog-bad.json", midog))


def test_points_csv_groups_by_image(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("patch,slide,x,y\na.png,s1,64,64\na.png,s1,10,20\nb.png,s2,64,64\n")
    images = read_points_csv(path, "patch", "x", "y", "slide", 128, 128, 0.25)
    assert [(im.image, im.slide, len(im.figures)) for im in images] == [("a.png", "s1", 2), ("b.png", "s2", 1)]
    path.write_text("patch,slide,x\na.png,s1,64\n")
    with pytest.raises(AnnotationError, match="missing column"):
        read_points_csv(path, "patch", "x", "y", "slide", 128, 128, 0.25)


def _images(n_slides: int, per_slide: int) -> list[AnnotatedImage]:
    return [
        AnnotatedImage(
            f"s{s}_{i}.png", f"slide-{s}", 256, 256, 0.25, (Figure("mitosis", 100.0 + s, 90.0 + i, "point"),)
        )
        for s in range(n_slides)
        for i in range(per_slide)
    ]


def test_splits_never_separate_a_slide_and_are_seeded() -> None:
    images = _images(10, 5)
    splits = split_by_slide(images, seed=3)
    train_slides = {im.slide for im in splits["train"]}
    assert train_slides.isdisjoint({im.slide for im in splits["test"]})
    assert len(splits["train"]) == 40
    assert split_by_slide(images, seed=3) == splits
    assert split_by_slide(images, seed=4) != splits
    with pytest.raises(AnnotationError, match="no annotated images"):
        split_by_slide([], seed=0)


def test_json_to_coco_to_yolo_round_trip_is_within_a_pixel(tmp_path: Path) -> None:
    image = read_platform(_write(tmp_path, "t.json", _platform_doc()))
    boxes = image_boxes(image)
    coco = coco_document([image])
    assert coco["categories"][0]["name"] == "mitosis"  # type: ignore[index]
    mitosis_boxes = [b for b in boxes if b.label == "mitosis"]
    for line, box in zip(yolo_lines(coco, 1), mitosis_boxes, strict=True):
        _, xc, yc, w, h = (float(v) for v in line.split())
        decoded = ((xc - w / 2) * 512, (yc - h / 2) * 512, (xc + w / 2) * 512, (yc + h / 2) * 512)
        assert decoded == pytest.approx((box.x0, box.y0, box.x1, box.y1), abs=1.0)


def test_dataset_writer_is_all_or_nothing(tmp_path: Path) -> None:
    images = _images(4, 2)
    root = tmp_path / "images"
    root.mkdir()
    for im in images:
        cv2.imwrite(str(root / im.image), np.zeros((256, 256, 3), np.uint8))
    counts = write_dataset(tmp_path / "ds", images, root, seed=0)
    assert counts["train_images"] + counts["test_images"] == 8
    assert len(list((tmp_path / "ds" / "yolo" / "labels" / "train").glob("*.txt"))) == counts["train_images"]
    (root / images[-1].image).unlink()
    with pytest.raises(AnnotationError, match="missing"):
        write_dataset(tmp_path / "ds2", images, root, seed=0)
    assert not (tmp_path / "ds2").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
