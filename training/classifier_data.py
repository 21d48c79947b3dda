"""The second stage's training set: real mitoses against real look-alikes, split by source image.

Every sample is a `SAMPLE_PX` square at 0.25 µm/px centred on one object, Reinhard-normalised
to the detector's target with its own source image's statistics (the pipeline's slide-level
scheme), so the classifier sees crops as the detector service cuts them from normalised tiles.

Sources (read `SOURCE.txt` in each folder of `../shared/data`):
- AMi-Br: every listed mitosis is a positive, with its atypical/normal label; nuclei found
  at least `NEGATIVE_MIN_DISTANCE_UM` from any listed mitosis in the same crop are negatives
  (in-domain negatives, so "which scanner" is not a shortcut to "mitosis").
- CoNSeP (colorectal, 0.275 µm/px, resampled): inflammatory, spindle and "other" nuclei are
  negatives; epithelial nuclei may be unlabelled mitoses and are never used, and random points
  are kept only away from them.
- NuCLS (breast): stromal nuclei, lymphocytes and "other" are negatives; tumour nuclei (which
  include mitoses) are not used.
- ICPR 2012 (breast, 0.2456 µm/px): the fields are fully labelled and the mitoses painted over,
  so nuclei and random points outside a margin around every listed mitosis are negatives.
- Synthetic slides (`mitoscope.synth`): planted mitoses and look-alikes, so the two-stage
  pipeline keeps what the detector was taught on our own slides.
- Hard negatives mined with a detector (`--mine-with`): its calls on the negative images that
  the rules above accept as negatives (the MIDOG winners' recipe), kept whatever their score.

Splits are by source image or slide, never by crop: AMi-Br uses the detector's own split (same
seed), CoNSeP and NuCLS keep their published train/test images, ICPR's first field trains and
its second validates.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mitoscope.synth import SynthParams, synthesize
from services.preprocess.reinhard import LabStats, stats_from_images
from training.samples import (
    DUPLICATE_PX,
    MPP_UM_PER_PX,
    NEGATIVE_MIN_DISTANCE_UM,
    SAMPLE_PX,
    Builder,
    dark_blobs,
    dataset_hash,
    dedupe,
    far_from,
    onnx_candidate_finder,
    resample,
)
from training.yolo_dataset import load_rgb, read_amibr, split_slides

ICPR_MARGIN_UM = 12.0  # beyond the painted-over extent of each ICPR mitosis
CONSEP_MPP = 0.275
NUCLS_MPP = 0.25
ICPR_MPP = 0.2456
AMIBR_NEGATIVES_PER_CROP = 4  # in-domain negatives, so the scanner is no shortcut to "mitosis"
CONSEP_NEGATIVE_TYPES = (1, 2, 4)  # other, inflammatory, spindle; 3 (epithelial) may hide mitoses
NUCLS_NEGATIVE_CLASSES = (1, 2, 3)  # stromal, lymphocyte, other; 0 (tumour) includes mitoses


def add_amibr(builder: Builder, amibr_dir: Path, seed: int) -> dict[str, str]:
    crops = read_amibr(amibr_dir)
    split_of = split_slides([c.source_slide for c in crops], seed, 0.15, 0.1)
    atypical_of: dict[tuple[str, float, float], bool] = {}
    with (amibr_dir / "amibr_patch_points.csv").open() as f:
        for row in csv.DictReader(f):
            key = (row["patch"], float(row["mf_x_in_patch"]), float(row["mf_y_in_patch"]))
            atypical_of[key] = row["mf_majority_atypical"] == "True"
    by_slide = defaultdict(list)
    for crop in crops:
        by_slide[crop.source_slide].append(crop)
    for slide, members in sorted(by_slide.items()):
        images = [load_rgb(c.path) for c in members]
        stats = stats_from_images(images)
        split = split_of[slide]
        for crop, raw in zip(members, images, strict=True):
            rgb = builder.normalise(raw, stats)
            rel = str(crop.path.relative_to(amibr_dir))
            for x, y in crop.points:
                builder.positive(rgb, x, y, int(atypical_of[(rel, x, y)]), split, "amibr", slide)
            # In-domain negatives: nuclei of the same crop, well away from every listed figure.
            avoid_px = NEGATIVE_MIN_DISTANCE_UM / MPP_UM_PER_PX
            blobs = far_from(dark_blobs(rgb), list(crop.points), avoid_px)
            builder.add_negatives(
                rgb, dedupe(blobs, DUPLICATE_PX)[:AMIBR_NEGATIVES_PER_CROP], split, "amibr", "blob", slide
            )
    return split_of


def consep_labels(mat_path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    from scipy.io import loadmat  # training venv only

    mat = loadmat(str(mat_path))
    return np.asarray(mat["inst_centroid"], np.float64).reshape(-1, 2), np.asarray(mat["inst_type"]).reshape(-1)


def add_consep(builder: Builder, consep_dir: Path) -> None:
    avoid_px = NEGATIVE_MIN_DISTANCE_UM / MPP_UM_PER_PX
    by_source: dict[str, list[Path]] = defaultdict(list)
    for image_path in sorted((consep_dir / "images").glob("*/*.jpg")):
        published, number = image_path.stem.split("_")[:2]
        by_source[f"{published}_{number}"].append(image_path)
    for source_image, paths in sorted(by_source.items()):
        published, number = source_image.split("_")
        # Published test images stay test; one train source image in five validates.
        split = "test" if published == "test" else "val" if int(number) % 5 == 0 else "train"
        resampled = [resample(load_rgb(p), CONSEP_MPP) for p in paths]
        stats = stats_from_images([rgb for rgb, _ in resampled])  # per source image, like a slide
        for image_path, (raw, factor) in zip(paths, resampled, strict=True):
            mat_path = consep_dir / "type_mat" / image_path.parent.name / f"{image_path.stem}.mat"
            centroids, types = consep_labels(mat_path)
            rgb = builder.normalise(raw, stats)
            points = [(float(x) * factor, float(y) * factor) for x, y in centroids]
            look_alikes = [p for p, t in zip(points, types, strict=True) if int(t) in CONSEP_NEGATIVE_TYPES]
            epithelial = [p for p, t in zip(points, types, strict=True) if int(t) == 3]
            # Blobs are left out: unlabelled dark blobs here may be epithelial nuclei.
            group = f"consep/{source_image}"
            builder.negatives(rgb, look_alikes, epithelial, avoid_px, split, "consep", group, with_blobs=False)


def add_nucls(builder: Builder, nucls_dir: Path) -> None:
    avoid_px = NEGATIVE_MIN_DISTANCE_UM / MPP_UM_PER_PX
    for image_path in sorted(nucls_dir.glob("*/images/*.png")):
        published = image_path.parent.parent.name
        split = "test" if published == "test" else "val" if image_path.stem in ("train_9", "train_10") else "train"
        rows = [r for r in csv.reader((image_path.parent.parent / "labels" / f"{image_path.stem}.csv").open()) if r]
        rgb, factor = resample(load_rgb(image_path), NUCLS_MPP)
        rgb = builder.normalise(rgb)
        points = [(float(r[0]) * factor, float(r[1]) * factor, int(r[2])) for r in rows]
        look_alikes = [(x, y) for x, y, c in points if c in NUCLS_NEGATIVE_CLASSES]
        tumour = [(x, y) for x, y, c in points if c not in NUCLS_NEGATIVE_CLASSES]
        group = f"nucls/{published}/{image_path.stem}"
        builder.negatives(rgb, look_alikes, tumour, avoid_px, split, "nucls", group, with_blobs=False)


def icpr_mitoses(csv_path: Path, factor: float) -> list[tuple[float, float, float]]:
    """Centre and radius (resampled pixels) of each listed mitosis."""
    out = []
    for line in csv_path.read_text().splitlines():
        values = [float(v) for v in line.split(",") if v.strip()]
        if len(values) < 2:
            continue
        xy = np.asarray(values, np.float64).reshape(-1, 2) * factor
        centre = xy.mean(axis=0)
        radius = float(np.max(np.hypot(xy[:, 0] - centre[0], xy[:, 1] - centre[1])))
        out.append((float(centre[0]), float(centre[1]), radius))
    return out


def add_icpr(builder: Builder, icpr_dir: Path) -> None:
    for image_path in sorted(icpr_dir.glob("*.jpg")):
        split = "train" if image_path.stem.endswith("_01") else "val"
        rgb, factor = resample(load_rgb(image_path), ICPR_MPP)
        rgb = builder.normalise(rgb)
        mitoses = icpr_mitoses(image_path.with_suffix(".csv"), factor)
        margin_px = ICPR_MARGIN_UM / MPP_UM_PER_PX + max((r for _, _, r in mitoses), default=0.0)
        avoid = [(x, y) for x, y, _ in mitoses]
        builder.negatives(rgb, [], avoid, margin_px, split, "icpr12", f"icpr12/{image_path.stem}")


def add_synthetic(builder: Builder, images: int, seed: int) -> None:
    for k in range(images):
        split = "val" if k % 5 == 4 else "train"
        params = SynthParams(1536, 1536, seed=20_000 + seed * 100 + k, tissue_fraction=0.8, mitoses_per_mm2=60.0)
        image = synthesize(params)
        rgb = builder.normalise(image.rgb)
        group = f"synth/{params.seed}"
        for m in image.mitoses:
            builder.positive(rgb, m.x_px, m.y_px, -1, split, "synth", group)
        look_alikes = [(m.x_px, m.y_px) for m in image.lookalikes]
        avoid = [(m.x_px, m.y_px) for m in image.mitoses]
        builder.negatives(rgb, look_alikes, avoid, NEGATIVE_MIN_DISTANCE_UM / MPP_UM_PER_PX, split, "synth", group)


def build(
    out_path: Path,
    shared_data: Path,
    target: LabStats,
    seed: int,
    synth_images: int,
    mine_with: Path | None,
    mine_threshold: float,
) -> dict[str, object]:
    """Write the sample set to `out_path` (.npz) with a manifest beside it (.json)."""
    finder = onnx_candidate_finder(mine_with, mine_threshold) if mine_with else None
    builder = Builder(target, seed, finder)
    manifest: dict[str, object] = {"seed": seed, "sample_px": SAMPLE_PX, "mpp_um_per_px": MPP_UM_PER_PX}
    sources = {
        "amibr": lambda d: manifest.__setitem__("amibr_slides", add_amibr(builder, d, seed)),
        "consep": lambda d: add_consep(builder, d),
        "nucls": lambda d: add_nucls(builder, d),
        "icpr12": lambda d: add_icpr(builder, d),
    }
    used = []
    for name, add in sources.items():
        folder = shared_data / name
        if folder.is_dir():
            add(folder)
            used.append(name)
    if synth_images:
        add_synthetic(builder, synth_images, seed)
        used.append("synthetic")
    if not builder.samples.images:
        raise ValueError(f"no training data found under {shared_data}")
    manifest.update(
        sources=used,
        mined_with=str(mine_with) if mine_with else None,
        mine_threshold=mine_threshold if mine_with else None,
        counts=dict(sorted(builder.counts.items())),
        target_lab=json.loads(target.to_json()),
        data_sha256=dataset_hash(builder.samples),
    )
    builder.samples.save(out_path, manifest)
    return manifest
