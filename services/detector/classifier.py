"""The second stage: a crop classifier that judges every candidate the detector proposes.

The detector runs at a low threshold (the classifier's `candidate_threshold`, the threshold its
hard negatives were mined at); a crop of `input_size_px` (80 px = 20 µm at 0.25 µm/px) around
each candidate's centre, cut from the same normalised tile, goes to the classifier, which
answers two probabilities: mitosis (vs look-alike) and atypical (vs normal, meaningful only for
mitoses). The final call is the mitosis probability against the classifier's validated
threshold; an atypical figure is a mitosis whose atypical probability reaches its own
validated threshold, reported as the class `atypical_mitosis`.

The classifier model follows the detectors' tensor contract (uint8 NHWC `images` in, one float
output) with `mitoscope.output_format` = `mitosis_atypical_probabilities` ([n, 2]).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from services.detector.backends import DetectorBackend, OnnxRuntimeBackend, TritonBackend
from services.detector.errors import ModelError
from services.detector.model import CLASSIFIER_MAX_BATCH, CLASSIFIER_OUTPUT_FORMAT, ModelInfo, resolve_model_path
from services.detector.postprocess import TileDetections

if TYPE_CHECKING:  # detector.py opens detectors through this module
    from services.detector.detector import Detector

NO_CLASSIFIER = "none"
MITOSIS_CLASS = "mitosis"
ATYPICAL_CLASS = "atypical_mitosis"
TWO_STAGE_CLASSES = (MITOSIS_CLASS, ATYPICAL_CLASS)
DEFAULT_MPP_UM_PER_PX = 0.25


def crops_around(image: npt.NDArray[np.uint8], centres: npt.NDArray[np.float32], size_px: int) -> npt.NDArray[np.uint8]:
    """Squares of `size_px` centred on each (x, y); what lies outside the image is mirrored in."""
    half = size_px // 2
    rest = size_px - half  # odd sizes: one more pixel after the centre than before it
    padded = cv2.copyMakeBorder(image, half, rest, half, rest, cv2.BORDER_REFLECT_101)
    out = np.empty((len(centres), size_px, size_px, 3), np.uint8)
    h, w = image.shape[:2]
    for i, (cx, cy) in enumerate(centres):
        x0 = int(np.clip(round(float(cx)) - half, -half, w - half)) + half
        y0 = int(np.clip(round(float(cy)) - half, -half, h - half)) + half
        out[i] = padded[y0 : y0 + size_px, x0 : x0 + size_px]
    return out


@dataclass
class CropClassifier:
    """Mitosis and atypical probabilities for crops centred on candidates."""

    backend: DetectorBackend

    def __post_init__(self) -> None:
        info = self.backend.info
        if info.output_format != CLASSIFIER_OUTPUT_FORMAT:
            raise ModelError(f"{info.name} is not a crop classifier (output format {info.output_format!r})")

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    @property
    def crop_px(self) -> int:
        return self.info.input_size_px

    @property
    def mitosis_threshold(self) -> float:
        return self.info.score_threshold

    @property
    def atypical_threshold(self) -> float:
        return float(self.info.extra.get("atypical_threshold", 0.5))

    @property
    def candidate_threshold(self) -> float:
        return float(self.info.extra.get("candidate_threshold", 0.1))

    def classify(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """(n, crop, crop, 3) uint8 normalised crops -> (n, 2): mitosis, atypical probability."""
        if not len(crops):
            return np.zeros((0, 2), np.float32)
        return self.backend.infer(crops)  # the backend splits them into calls of its sub-batch

    def classify_images(
        self, images: list[npt.NDArray[np.uint8]], mpp_um_per_px: float = DEFAULT_MPP_UM_PER_PX
    ) -> npt.NDArray[np.float32]:
        """Images each centred on one figure, at `mpp_um_per_px`: resampled to the model's MPP,
        then the centre crop is classified (images smaller than a crop are mirrored out)."""
        crops = []
        for image in images:
            factor = mpp_um_per_px / self.info.mpp_um_per_px
            if abs(factor - 1) > 1e-3:
                size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
            centre = np.array([[image.shape[1] / 2, image.shape[0] / 2]], dtype=np.float32)
            crops.append(crops_around(np.ascontiguousarray(image), centre, self.crop_px)[0])
        return self.classify(np.stack(crops)) if crops else np.zeros((0, 2), np.float32)

    def close(self) -> None:
        self.backend.close()


@dataclass
class TwoStageDetector:
    """Detector candidates at a low threshold, each confirmed or dropped by the crop classifier."""

    detector: Detector
    classifier: CropClassifier
    candidate_threshold: float | None = None  # None: the one the classifier was validated with
    info: ModelInfo = field(init=False)

    def __post_init__(self) -> None:
        first, second = self.detector.info, self.classifier.info
        if second.reinhard_target_lab != first.reinhard_target_lab or second.mpp_um_per_px != first.mpp_um_per_px:
            raise ModelError(
                f"classifier {second.name} was trained for another stain target or resolution than {first.name}; "
                "retrain it with `mitoscope train classifier --detector <that model>`"
            )
        self.info = replace(
            first,
            name=f"{first.name}+{second.name}",
            version=f"{first.version}+{second.version}",
            sha256=f"{first.sha256[:16]}+{second.sha256[:16]}",
            class_names=TWO_STAGE_CLASSES,
            score_threshold=self.classifier.mitosis_threshold,
            extra={
                **first.extra,
                "detector": first.name,
                "classifier": second.name,
                "candidate_threshold": str(self.classifier.candidate_threshold),
                "atypical_threshold": str(self.classifier.atypical_threshold),
            },
        )

    @property
    def description(self) -> str:
        return f"{self.detector.description}, then {self.classifier.backend.description}"

    def detect(self, tiles: npt.NDArray[np.uint8], score_threshold: float | None = None) -> list[TileDetections]:
        """`score_threshold` applies to the mitosis probability (default: the validated one)."""
        threshold = self.classifier.mitosis_threshold if score_threshold is None else score_threshold
        candidate_threshold = (
            self.classifier.candidate_threshold if self.candidate_threshold is None else self.candidate_threshold
        )
        candidates = self.detector.detect(tiles, candidate_threshold)
        crops = []
        for tile, found in zip(tiles, candidates, strict=True):
            if len(found):
                centres = ((found.boxes_px[:, :2] + found.boxes_px[:, 2:]) / 2).astype(np.float32)
                crops.append(crops_around(tile, centres, self.classifier.crop_px))
        probabilities = self.classifier.classify(np.concatenate(crops)) if crops else np.zeros((0, 2), np.float32)
        out, start = [], 0
        for found in candidates:
            p = probabilities[start : start + len(found)]
            start += len(found)
            keep = p[:, 0] >= threshold
            atypical = p[keep, 1] >= self.classifier.atypical_threshold
            out.append(
                TileDetections(
                    found.boxes_px[keep],
                    found.scores[keep],
                    atypical.astype(np.int64),
                    mitosis_probabilities=p[keep, 0].copy(),
                    atypical_probabilities=p[keep, 1].copy(),
                )
            )
        return out

    def close(self) -> None:
        self.detector.close()
        self.classifier.close()


def open_classifier(name: str, backend: str, repository: Path, triton_url: str, threads: int = 0) -> CropClassifier:
    # Crops are small: a whole batch's candidates go in one call (the Triton configs allow as many).
    model: DetectorBackend = (
        TritonBackend(triton_url, name, sub_batch=CLASSIFIER_MAX_BATCH)
        if backend == "triton"
        else OnnxRuntimeBackend(resolve_model_path(name, repository), threads=threads, sub_batch=CLASSIFIER_MAX_BATCH)
    )
    try:
        return CropClassifier(model)
    except BaseException:  # not a classifier: close the session or client it opened
        model.close()
        raise


def with_classifier(
    detector: Detector, classifier: str, backend: str, repository: Path, triton_url: str, threads: int = 0
) -> Detector:
    """`detector` confirmed by `classifier` (a name, an .onnx path, or "none" for the detector alone)."""
    if classifier == NO_CLASSIFIER:
        return detector
    try:
        second = open_classifier(classifier, backend, repository, triton_url, threads)
    except BaseException:
        detector.close()
        raise
    try:
        return TwoStageDetector(detector, second)
    except BaseException:  # trained for another stain target or resolution
        detector.close()
        second.close()
        raise
