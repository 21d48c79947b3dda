"""From annotated images to training sets: boxes, splits by slide, COCO JSON and YOLO txt.

- Ellipses are rasterised with `cv2.ellipse` and take the box of their mask; ellipses whose
  area is below `min_area_um2` are dropped (the paper removes tiny ellipses).
- Points get a fixed box of `point_box_um` (MIDOG: 50 px at 0.25 µm/px = 12.5 µm).
- Splits are by slide, never by image, seeded; 80/20 by default.
- Writers build the whole dataset in a staging folder and move it into place at the end, so a
  failure never leaves a half dataset that looks complete.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.annotations import LABELS, AnnotatedImage, AnnotationError, Figure, ellipse_area_um2

DEFAULT_MIN_AREA_UM2 = 10.0
DEFAULT_POINT_BOX_UM = 12.5
DEFAULT_TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class Box:
    label: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


def ellipse_mask(figure: Figure, width_px: int, height_px: int) -> np.ndarray:
    mask = np.zeros((height_px, width_px), np.uint8)
    cv2.ellipse(
        mask,
        (round(figure.cx_px), round(figure.cy_px)),
        (max(1, round(figure.semi_axes_px[0])), max(1, round(figure.semi_axes_px[1]))),
        figure.angle_deg,
        0,
        360,
        1,
        -1,
    )
    return mask


def figure_box(figure: Figure, image: AnnotatedImage, point_box_um: float) -> Box | None:
    """The figure's box in image pixels, clipped to the image; None if nothing is left."""
    if figure.kind == "ellipse":
        ys, xs = np.nonzero(ellipse_mask(figure, image.width_px, image.height_px))
        if not len(xs):
            return None
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    elif figure.kind == "box":
        assert figure.box_px is not None
        x0, y0, x1, y1 = figure.box_px
    else:
        half = point_box_um / image.mpp_um_per_px / 2
        x0, y0, x1, y1 = figure.cx_px - half, figure.cy_px - half, figure.cx_px + half, figure.cy_px + half
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    x1, y1 = min(x1, float(image.width_px)), min(y1, float(image.height_px))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return Box(figure.label, x0, y0, x1, y1)


def image_boxes(
    image: AnnotatedImage, min_area_um2: float = DEFAULT_MIN_AREA_UM2, point_box_um: float = DEFAULT_POINT_BOX_UM
) -> list[Box]:
    boxes = []
    for figure in image.figures:
        if figure.kind == "ellipse" and ellipse_area_um2(figure, image.mpp_um_per_px) < min_area_um2:
            continue
        box = figure_box(figure, image, point_box_um)
        if box is not None:
            boxes.append(box)
    return boxes


def split_by_slide(
    images: Sequence[AnnotatedImage], seed: int, train_fraction: float = DEFAULT_TRAIN_FRACTION
) -> dict[str, list[AnnotatedImage]]:
    """Whole slides go to train or test; the share of images in train is close to `train_fraction`."""
    if not images:
        raise AnnotationError("no annotated images: nothing to split")
    slides = sorted({im.slide for im in images})
    random.Random(seed).shuffle(slides)
    per_slide = {s: sum(1 for im in images if im.slide == s) for s in slides}
    target = train_fraction * len(images)
    train_slides: set[str] = set()
    count = 0
    for slide in slides:
        if count >= target and train_slides:
            break
        train_slides.add(slide)
        count += per_slide[slide]
    if len(train_slides) == len(slides) and len(slides) > 1:
        train_slides.discard(slides[-1])  # keep at least one slide for testing
    return {
        "train": [im for im in images if im.slide in train_slides],
        "test": [im for im in images if im.slide not in train_slides],
    }


def coco_document(
    images: Sequence[AnnotatedImage],
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    point_box_um: float = DEFAULT_POINT_BOX_UM,
) -> dict[str, object]:
    """COCO detection JSON: categories, images, annotations with bbox [x, y, w, h], area, iscrowd."""
    categories = [{"id": i + 1, "name": label, "supercategory": "cell"} for i, label in enumerate(LABELS)]
    category_id = {label: i + 1 for i, label in enumerate(LABELS)}
    coco_images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id, image in enumerate(images, start=1):
        coco_images.append(
            {
                "id": image_id,
                "file_name": image.image,
                "width": image.width_px,
                "height": image.height_px,
                "slide": image.slide,
                "mpp": image.mpp_um_per_px,
            }
        )
        for box in image_boxes(image, min_area_um2, point_box_um):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id[box.label],
                    "bbox": [round(box.x0, 2), round(box.y0, 2), round(box.width, 2), round(box.height, 2)],
                    "area": round(box.width * box.height, 2),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "mitoscope dataset"},
        "categories": categories,
        "images": coco_images,
        "annotations": annotations,
    }


def yolo_lines(coco: dict[str, object], image_id: int, classes: Sequence[str] = ("mitosis",)) -> list[str]:
    """YOLO txt rows `class xc yc w h` (normalised) for one COCO image; other labels are dropped."""
    images = {im["id"]: im for im in coco["images"]}  # type: ignore[attr-defined]
    names = {c["id"]: c["name"] for c in coco["categories"]}  # type: ignore[attr-defined]
    image = images[image_id]
    w, h = image["width"], image["height"]
    lines = []
    for ann in coco["annotations"]:  # type: ignore[attr-defined]
        if ann["image_id"] != image_id or names[ann["category_id"]] not in classes:
            continue
        x, y, bw, bh = ann["bbox"]
        lines.append(
            f"{classes.index(names[ann['category_id']])} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
            f"{bw / w:.6f} {bh / h:.6f}"
        )
    return lines


def write_dataset(
    out_dir: Path,
    images: Sequence[AnnotatedImage],
    image_root: Path,
    seed: int,
    train_fraction: float = DEFAULT_TRAIN_FRACTION,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    point_box_um: float = DEFAULT_POINT_BOX_UM,
) -> dict[str, int]:
    """Write `coco/{train,test}.json` and `yolo/{images,labels}/{train,test}/` plus `data.yaml`."""
    for image in images:
        if not (image_root / image.image).is_file():
            raise AnnotationError(f"{image_root / image.image}: image listed in the annotations is missing")
    splits = split_by_slide(images, seed, train_fraction)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    counts: dict[str, int] = {}
    try:
        (staging / "coco").mkdir()
        for split, members in splits.items():
            coco = coco_document(members, min_area_um2, point_box_um)
            (staging / "coco" / f"{split}.json").write_text(json.dumps(coco, indent=1))
            image_dir = staging / "yolo" / "images" / split
            label_dir = staging / "yolo" / "labels" / split
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            for entry in coco["images"]:  # type: ignore[attr-defined]
                stem = f"{entry['id']:06d}_{Path(entry['file_name']).stem}"
                shutil.copy2(image_root / entry["file_name"], image_dir / f"{stem}{Path(entry['file_name']).suffix}")
                lines = yolo_lines(coco, entry["id"])
                (label_dir / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
            counts[f"{split}_images"] = len(members)
            counts[f"{split}_annotations"] = len(coco["annotations"])  # type: ignore[arg-type]
            counts[f"{split}_slides"] = len({m.slide for m in members})
        (staging / "yolo" / "data.yaml").write_text(
            f"path: {out_dir.resolve() / 'yolo'}\ntrain: images/train\nval: images/test\nnames:\n  0: mitosis\n"
        )
        (staging / "manifest.json").write_text(
            json.dumps(
                {
                    "seed": seed,
                    "train_fraction": train_fraction,
                    "min_area_um2": min_area_um2,
                    "point_box_um": point_box_um,
                    "counts": counts,
                },
                indent=1,
            )
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts
