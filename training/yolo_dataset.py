"""Build the YOLO training set: real AMi-Br mitosis crops plus synthetic tiles.

Real crops (128 px, one mitosis in the centre, ~0.25 µm/px) are grouped by their source slide,
split by slide (never by crop), Reinhard-normalised with each source slide's own statistics
(the same slide-level scheme the pipeline uses) and packed four to a 256 px image so the scale
stays native. Synthetic tiles come from `mitoscope.synth` with known mitoses and look-alikes.
Each mitosis becomes a fixed 50 px box (MIDOG's convention at 0.25 µm/px).
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from mitoscope.synth import SynthParams, synthesize
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images

IMAGE_PX = 256
CROP_PX = 128
BOX_PX = 50
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Crop:
    path: Path
    source_slide: str
    points: tuple[tuple[float, float], ...]


def read_amibr(amibr_dir: Path) -> list[Crop]:
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    slides: dict[str, str] = {}
    with (amibr_dir / "amibr_patch_points.csv").open() as f:
        for row in csv.DictReader(f):
            points[row["patch"]].append((float(row["mf_x_in_patch"]), float(row["mf_y_in_patch"])))
            slides[row["patch"]] = f"{row['dataset']}/{row['slide']}"
    return [Crop(amibr_dir / p, slides[p], tuple(pts)) for p, pts in sorted(points.items())]


def split_slides(slides: list[str], seed: int, test_frac: float, val_frac: float) -> dict[str, str]:
    """Assign whole source slides to train/val/test, seeded."""
    order = sorted(set(slides))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(order) * test_frac))
    n_val = max(1, round(len(order) * val_frac))
    split = {}
    for i, slide in enumerate(order):
        split[slide] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return split


def load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _write(
    image_dir: Path, label_dir: Path, name: str, rgb: npt.NDArray[np.uint8], centres: list[tuple[float, float]]
) -> None:
    cv2.imwrite(str(image_dir / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    h, w = rgb.shape[:2]
    lines = []
    for x, y in centres:
        x0, y0 = max(x - BOX_PX / 2, 0), max(y - BOX_PX / 2, 0)
        x1, y1 = min(x + BOX_PX / 2, w), min(y + BOX_PX / 2, h)
        if x1 - x0 < BOX_PX / 4 or y1 - y0 < BOX_PX / 4:
            continue
        lines.append(f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
    (label_dir / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def build(out_dir: Path, amibr_dir: Path | None, synth_images: int, seed: int) -> dict[str, object]:
    """Write images/, labels/, data.yaml, target_lab.json and manifest.json under `out_dir`."""
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    manifest: dict[str, object] = {"seed": seed, "box_px": BOX_PX, "image_px": IMAGE_PX}
    slide_stats: dict[str, LabStats] = {}
    crops: list[Crop] = []
    split_of: dict[str, str] = {}
    if amibr_dir is not None:
        crops = read_amibr(amibr_dir)
        split_of = split_slides([c.source_slide for c in crops], seed, 0.15, 0.1)
        by_slide: dict[str, list[Crop]] = defaultdict(list)
        for crop in crops:
            by_slide[crop.source_slide].append(crop)
        for slide, members in sorted(by_slide.items()):
            slide_stats[slide] = stats_from_images([load_rgb(c.path) for c in members])
        manifest["amibr_slides"] = split_of

    synth: list[tuple[str, SynthParams]] = []
    val_images = set(range(4, synth_images, 5)) or {synth_images - 1}  # every fifth, at least one
    for k in range(synth_images):
        split = "val" if k in val_images else "train"
        synth.append(
            (
                split,
                SynthParams(
                    2048,
                    2048,
                    seed=10_000 + seed * 100 + k,
                    tissue_fraction=0.75,
                    mitoses_per_mm2=60.0,
                    lookalikes_per_mm2=120.0,
                    hotspot_boost=0.0,
                ),
            )
        )
    synth_rendered = [(split, synthesize(p)) for split, p in synth]
    synth_stats = [stats_from_images([img.rgb]) for _, img in synth_rendered]

    # The target is the average training-slide statistic: the model sees colours near it.
    train_stats = [s for slide, s in slide_stats.items() if split_of[slide] == "train"]
    train_stats += [s for (split, _), s in zip(synth_rendered, synth_stats, strict=True) if split == "train"]
    target = LabStats(
        tuple(float(np.mean([s.mean[c] for s in train_stats])) for c in range(3)),  # type: ignore[arg-type]
        tuple(float(np.mean([s.std[c] for s in train_stats])) for c in range(3)),  # type: ignore[arg-type]
    )
    (out_dir / "target_lab.json").write_text(target.to_json())

    counts: dict[str, int] = defaultdict(int)
    # Real crops, four to a 256 px image, grouped within a split.
    for split in SPLITS:
        members = [c for c in crops if split_of[c.source_slide] == split]
        rng.shuffle(members)
        if split == "test":
            manifest["amibr_test_crops"] = [str(c.path.relative_to(amibr_dir)) for c in members]  # type: ignore[arg-type]
            continue
        for i in range(0, len(members) - 3, 4):
            canvas = np.zeros((IMAGE_PX, IMAGE_PX, 3), np.uint8)
            centres = []
            for j, crop in enumerate(members[i : i + 4]):
                ox, oy = (j % 2) * CROP_PX, (j // 2) * CROP_PX
                norm = ReinhardNormaliser(slide_stats[crop.source_slide], target)
                canvas[oy : oy + CROP_PX, ox : ox + CROP_PX] = norm(load_rgb(crop.path))
                centres += [(x + ox, y + oy) for x, y in crop.points]
            _write(out_dir / "images" / split, out_dir / "labels" / split, f"amibr_{i // 4:05d}", canvas, centres)
            counts[f"{split}_amibr_images"] += 1

    # Synthetic tiles: every tile with a mitosis, plus tissue tiles without one as negatives.
    for (split, image), stats in zip(synth_rendered, synth_stats, strict=True):
        norm = ReinhardNormaliser(stats, target)
        rgb = norm(image.rgb)
        params = image.params
        for ty in range(0, params.height_px - IMAGE_PX + 1, IMAGE_PX):
            for tx in range(0, params.width_px - IMAGE_PX + 1, IMAGE_PX):
                tile = rgb[ty : ty + IMAGE_PX, tx : tx + IMAGE_PX]
                centres = [
                    (m.x_px - tx, m.y_px - ty)
                    for m in image.mitoses
                    if tx <= m.x_px < tx + IMAGE_PX and ty <= m.y_px < ty + IMAGE_PX
                ]
                has_tissue = float((tile.mean(axis=2) < 215).mean()) > 0.5
                if not centres and (not has_tissue or rng.random() > 0.35):
                    continue
                _write(
                    out_dir / "images" / split,
                    out_dir / "labels" / split,
                    f"synth_{params.seed}_{ty}_{tx}",
                    np.ascontiguousarray(tile),
                    centres,
                )
                counts[f"{split}_synth_images"] += 1

    manifest["counts"] = dict(counts)
    manifest["target_lab"] = json.loads(target.to_json())
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out_dir / "data.yaml").write_text(
        f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: mitosis\n"
    )
    return manifest
