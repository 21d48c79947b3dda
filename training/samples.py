"""Samples for the second stage: fixed squares around objects, normalised, labelled, split.

`Builder` turns an image (normalised to the detector's target at 0.25 µm/px) and its labelled
points into samples: labelled look-alikes, dark blobs, random points and the detector's own calls
(mined by a `CandidateFinder`), all kept away from anything that may be a mitosis, and the same
tissue as a 20x scan would show it. `training/classifier_data.py` feeds it every data set.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from services.detector.classifier import crops_around
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images

MPP_UM_PER_PX = 0.25
SAMPLE_PX = 96  # stored square; the classifier sees a CROP_PX window of it, shifted by augmentation
NEGATIVE_MIN_DISTANCE_UM = 10.0  # a negative's centre is this far from any listed mitosis
DUPLICATE_PX = 4.0 / MPP_UM_PER_PX  # two points this close are one object
RANDOM_POINTS_PER_MM2 = 800.0  # background, stroma and collagen: what the detector also calls
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# A candidate finder: normalised RGB image at 0.25 µm/px -> object centres (x, y) in pixels.
CandidateFinder = Callable[[npt.NDArray[np.uint8]], list[tuple[float, float]]]


@dataclass
class SampleSet:
    """Samples as parallel lists; `atypical` is 1/0 for a labelled mitosis, -1 otherwise."""

    images: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    is_mitosis: list[int] = field(default_factory=list)
    atypical: list[int] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)

    def add(self, image: npt.NDArray[np.uint8], mitosis: bool, atypical: int, split: str, source: str, group: str):
        self.images.append(image)
        self.is_mitosis.append(int(mitosis))
        self.atypical.append(atypical)
        self.split.append(SPLIT_IDS[split])
        self.source.append(source)
        self.group.append(group)

    def save(self, path: Path, manifest: dict[str, object]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(
            partial,
            images=np.stack(self.images),
            is_mitosis=np.array(self.is_mitosis, np.int8),
            atypical=np.array(self.atypical, np.int8),
            split=np.array(self.split, np.int8),
            source=np.array(self.source),
            group=np.array(self.group),
        )
        partial.rename(path)
        path.with_suffix(".json").write_text(json.dumps(manifest, indent=1))


def cut_samples(image: npt.NDArray[np.uint8], points: list[tuple[float, float]]) -> npt.NDArray[np.uint8]:
    """SAMPLE_PX squares centred on `points`, cut the way the detector service cuts its crops."""
    return crops_around(image, np.asarray(points, np.float32).reshape(-1, 2), SAMPLE_PX)


def resample(image: npt.NDArray[np.uint8], mpp_um_per_px: float) -> tuple[npt.NDArray[np.uint8], float]:
    """The image at 0.25 µm/px, and the factor that maps its original pixels to the new ones."""
    factor = mpp_um_per_px / MPP_UM_PER_PX
    if abs(factor - 1.0) < 1e-3:
        return image, 1.0
    h, w = image.shape[:2]
    size = (round(w * factor), round(h * factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC), factor


def scanned_at_20x(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """`rgb` (0.25 µm/px) as a 20x scan would give it after the tiler's upsampling: half the
    resolution, JPEG-compressed as scanners store it, then resized back with linear interpolation."""
    h, w = rgb.shape[:2]
    half = cv2.resize(rgb, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", half, [cv2.IMWRITE_JPEG_QUALITY, 75])
    if ok:
        half = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR)


def dark_blobs(rgb: npt.NDArray[np.uint8]) -> list[tuple[float, float]]:
    """Nucleus-sized dark blobs (haematoxylin) of a normalised image at 0.25 µm/px."""
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 1.5)
    threshold, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    mask = (grey < min(threshold, 150)).astype(np.uint8)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    px_per_um2 = 1 / MPP_UM_PER_PX**2
    keep = [
        (float(centroids[i][0]), float(centroids[i][1]))
        for i in range(1, count)
        if 12 * px_per_um2 <= stats[i, cv2.CC_STAT_AREA] <= 150 * px_per_um2  # ~4-14 µm across
    ]
    return keep


def random_points(rng: random.Random, width_px: int, height_px: int) -> list[tuple[float, float]]:
    area_mm2 = width_px * height_px * (MPP_UM_PER_PX / 1000) ** 2
    n = max(1, round(RANDOM_POINTS_PER_MM2 * area_mm2))
    return [(rng.uniform(0, width_px), rng.uniform(0, height_px)) for _ in range(n)]


def far_from(points: list[tuple[float, float]], avoid: list[tuple[float, float]], min_px: float):
    if not avoid:
        return list(points)
    avoid_arr = np.asarray(avoid, np.float64)
    out = []
    for x, y in points:
        if float(np.min(np.hypot(avoid_arr[:, 0] - x, avoid_arr[:, 1] - y))) >= min_px:
            out.append((x, y))
    return out


def dedupe(points: list[tuple[float, float]], min_px: float) -> list[tuple[float, float]]:
    kept: list[tuple[float, float]] = []
    for p in points:
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_px**2 for q in kept):
            kept.append(p)
    return kept


class Builder:
    def __init__(self, target: LabStats, seed: int, finder: CandidateFinder | None) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.finder = finder
        self.samples = SampleSet()
        self.counts: dict[str, int] = defaultdict(int)

    def normalise(self, rgb: npt.NDArray[np.uint8], stats: LabStats | None = None) -> npt.NDArray[np.uint8]:
        return ReinhardNormaliser(stats or stats_from_images([rgb]), self.target)(rgb)

    def negatives(
        self,
        rgb: npt.NDArray[np.uint8],
        labelled: list[tuple[float, float]],
        avoid: list[tuple[float, float]],
        avoid_px: float,
        split: str,
        source: str,
        group: str,
        with_blobs: bool = True,
    ) -> None:
        """Labelled look-alikes, dark blobs, random points and mined calls, all away from `avoid`."""
        h, w = rgb.shape[:2]
        kinds: dict[str, list[tuple[float, float]]] = {
            "nucleus": labelled,
            "blob": dark_blobs(rgb) if with_blobs else [],
            "random": random_points(self.rng, w, h),
            "mined": self.finder(rgb) if self.finder else [],
        }
        taken: list[tuple[float, float]] = []
        for kind, points in kinds.items():
            # One sample per object: a point within DUPLICATE_UM of one already taken is the same object.
            points = dedupe(far_from(far_from(points, avoid, avoid_px), taken, DUPLICATE_PX), DUPLICATE_PX)
            self.add_negatives(rgb, points, split, source, kind, group)
            taken += points
        if self.finder:
            # The same tissue as a 20x scanner sees it, resampled to 40x as the tiler does: the
            # detector's calls there are the look-alikes of 20x slides.
            as_20x = scanned_at_20x(rgb)
            mined = dedupe(far_from(self.finder(as_20x), avoid, avoid_px), DUPLICATE_PX)
            self.add_negatives(as_20x, mined, split, source, "mined20x", group)

    def add_negatives(
        self,
        rgb: npt.NDArray[np.uint8],
        points: list[tuple[float, float]],
        split: str,
        source: str,
        kind: str,
        group: str,
    ) -> None:
        """Negatives at `points` of one image, cut in one pass."""
        if not points:
            return
        for sample in cut_samples(rgb, points):
            self.samples.add(sample, False, -1, split, f"{source}:{kind}", group)
        self.counts[f"{split}_{source}_{kind}"] += len(points)

    def positive(self, rgb, x: float, y: float, atypical: int, split: str, source: str, group: str) -> None:
        self.samples.add(cut_samples(rgb, [(x, y)])[0], True, atypical, split, source, group)
        self.counts[f"{split}_{source}_mitosis"] += 1


def onnx_candidate_finder(model_path: Path, score_threshold: float) -> CandidateFinder:
    """Centres of the detector's calls on a normalised image, tile by tile (hard-negative mining)."""
    from services.detector.backends import OnnxRuntimeBackend
    from services.detector.postprocess import decode

    backend = OnnxRuntimeBackend(model_path)
    tile_px = backend.info.input_size_px

    def find(rgb: npt.NDArray[np.uint8]) -> list[tuple[float, float]]:
        h, w = rgb.shape[:2]
        padded = cv2.copyMakeBorder(rgb, 0, max(0, tile_px - h), 0, max(0, tile_px - w), cv2.BORDER_REFLECT_101)
        step = tile_px - 64
        centres: list[tuple[float, float]] = []
        for ty in _starts(padded.shape[0], tile_px, step):
            for tx in _starts(padded.shape[1], tile_px, step):
                tile = padded[ty : ty + tile_px, tx : tx + tile_px][None]
                dets = decode(backend.infer(np.ascontiguousarray(tile)), backend.info.output_format, score_threshold)[0]
                for x0, y0, x1, y1 in dets.boxes_px:
                    cx, cy = tx + (x0 + x1) / 2, ty + (y0 + y1) / 2
                    if cx < w and cy < h:
                        centres.append((float(cx), float(cy)))
        return centres

    return find


def _starts(length: int, tile: int, step: int) -> Iterator[int]:
    last = max(0, length - tile)
    yield from range(0, last, step)
    yield last


def dataset_hash(samples: SampleSet) -> str:
    digest = hashlib.sha256()
    for image, label in zip(samples.images, samples.is_mitosis, strict=True):
        digest.update(image.tobytes())
        digest.update(bytes([label]))
    return digest.hexdigest()
