"""Detectors: uint8 tiles in, post-processed boxes per tile out.

- `ModelDetector`: one model on one backend, decoded by the model's declared output format, at
  the model's validated threshold unless told otherwise.
- `EnsembleDetector`: several models fused with weighted box fusion (WBF, Solovyev et al.):
  boxes of all models that overlap (IoU above a threshold) form a cluster whose box is the
  score-weighted mean of its members and whose score is their summed weighted score divided by
  the total model weight, so a figure found by one model only is down-weighted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.detector.backends import DetectorBackend, OnnxRuntimeBackend, TritonBackend
from services.detector.classifier import with_classifier
from services.detector.errors import ModelError
from services.detector.model import DEFAULT_CLASSIFIER_NAME, ModelInfo, resolve_model_path
from services.detector.postprocess import DEFAULT_IOU_THRESHOLD, TileDetections, decode

DEFAULT_WBF_IOU = 0.55  # above the NMS IoU (0.45), so boxes one model kept apart stay apart
ENSEMBLE_CANDIDATE_THRESHOLD = 0.05  # each member's boxes down to this score enter the fusion


class Detector(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    @property
    def description(self) -> str: ...

    def detect(self, tiles: npt.NDArray[np.uint8], score_threshold: float | None = None) -> list[TileDetections]: ...

    def close(self) -> None: ...


@dataclass
class ModelDetector:
    backend: DetectorBackend
    iou_threshold: float = DEFAULT_IOU_THRESHOLD

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    @property
    def description(self) -> str:
        return self.backend.description

    def detect(self, tiles: npt.NDArray[np.uint8], score_threshold: float | None = None) -> list[TileDetections]:
        threshold = self.info.score_threshold if score_threshold is None else score_threshold
        return decode(self.backend.infer(tiles), self.info.output_format, threshold, self.iou_threshold)

    def close(self) -> None:
        self.backend.close()


def _iou(box: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9), dtype=np.float32)


def weighted_box_fusion(
    per_model: list[TileDetections], weights: list[float], iou_threshold: float = DEFAULT_WBF_IOU
) -> TileDetections:
    """Fuse one tile's detections from several models (one class id at a time).

    A cluster's box is the mean of its members' boxes weighted by score x model weight; its score
    is the weight-averaged member score scaled by min(cluster weight, total weight) / total weight,
    so a figure that only some models find is down-weighted and several boxes from one model
    cannot push a score above what the models said."""
    total_weight = float(sum(weights))
    rows = [
        (box, float(score), float(w), int(cls))
        for dets, w in zip(per_model, weights, strict=True)
        for box, score, cls in zip(dets.boxes_px, dets.scores, dets.class_ids, strict=True)
    ]
    rows.sort(key=lambda r: -r[1] * r[2])
    fused_boxes: list[npt.NDArray[np.float32]] = []
    members: list[list[tuple[npt.NDArray[np.float32], float, float]]] = []
    classes: list[int] = []
    for box, score, weight, cls in rows:
        match = -1
        same_class = [i for i, c in enumerate(classes) if c == cls]
        if same_class:
            overlaps = _iou(box, np.stack([fused_boxes[i] for i in same_class]))
            best = int(np.argmax(overlaps))
            if overlaps[best] > iou_threshold:
                match = same_class[best]
        if match < 0:
            fused_boxes.append(box.astype(np.float32))
            members.append([(box, score, weight)])
            classes.append(cls)
            continue
        members[match].append((box, score, weight))
        confidence = np.array([s * w for _, s, w in members[match]], np.float32)
        stacked = np.stack([b for b, _, _ in members[match]])
        fused_boxes[match] = (stacked * confidence[:, None]).sum(axis=0) / max(float(confidence.sum()), 1e-9)
    if not fused_boxes:
        return TileDetections.empty()
    fused_scores = []
    for cluster in members:
        cluster_weight = sum(w for _, _, w in cluster)
        mean_score = sum(s * w for _, s, w in cluster) / cluster_weight
        fused_scores.append(mean_score * min(cluster_weight, total_weight) / total_weight)
    return TileDetections(
        np.stack(fused_boxes).astype(np.float32), np.array(fused_scores, np.float32), np.array(classes, np.int64)
    )


@dataclass
class EnsembleDetector:
    members: list[ModelDetector]
    weights: list[float]
    score_threshold: float
    iou_threshold: float = DEFAULT_WBF_IOU
    info: ModelInfo = field(init=False)

    def __post_init__(self) -> None:
        if len(self.members) < 2 or len(self.weights) != len(self.members):
            raise ModelError("an ensemble needs two or more members and one weight each")
        first = self.members[0].info
        for member in self.members[1:]:
            other = member.info
            if (other.input_size_px, other.mpp_um_per_px, other.class_names, other.reinhard_target_lab) != (
                first.input_size_px,
                first.mpp_um_per_px,
                first.class_names,
                first.reinhard_target_lab,
            ):
                raise ModelError(f"{other.name} and {first.name} differ in input size, MPP, classes or stain target")
        names = "+".join(m.info.name for m in self.members)
        self.info = ModelInfo(
            name=f"ensemble({names})",
            version="+".join(m.info.version for m in self.members),
            input_size_px=first.input_size_px,
            mpp_um_per_px=first.mpp_um_per_px,
            class_names=first.class_names,
            output_format="fused",
            reinhard_target_lab=first.reinhard_target_lab,
            sha256="+".join(m.info.sha256[:16] for m in self.members),
            score_threshold=self.score_threshold,
            extra={"weights": ",".join(str(w) for w in self.weights)},
        )

    @property
    def description(self) -> str:
        return "weighted box fusion of " + ", ".join(m.description for m in self.members)

    def detect(self, tiles: npt.NDArray[np.uint8], score_threshold: float | None = None) -> list[TileDetections]:
        threshold = self.score_threshold if score_threshold is None else score_threshold
        outputs = [m.detect(tiles, ENSEMBLE_CANDIDATE_THRESHOLD) for m in self.members]
        fused = []
        for per_model in zip(*outputs, strict=True):
            tile = weighted_box_fusion(list(per_model), self.weights, self.iou_threshold)
            keep = tile.scores >= threshold
            fused.append(TileDetections(tile.boxes_px[keep], tile.scores[keep], tile.class_ids[keep]))
        return fused

    def close(self) -> None:
        for member in self.members:
            member.close()


ENSEMBLE_NAME = "ensemble"
ENSEMBLE_MEMBERS = ("yolov5n_mitosis", "faster_rcnn_mitosis")


def open_detector(
    model: str,
    backend: str,
    repository: Path,
    triton_url: str,
    threads: int = 0,
    classifier: str = DEFAULT_CLASSIFIER_NAME,
) -> Detector:
    """A detector by model name (or .onnx path, or "ensemble") on "onnxruntime" or "triton", its
    candidates confirmed by the second-stage `classifier` ("none": the detector alone)."""
    first = _first_stage(model, backend, repository, triton_url, threads)
    return with_classifier(first, classifier, backend, repository, triton_url, threads)


def _first_stage(model: str, backend: str, repository: Path, triton_url: str, threads: int) -> Detector:
    if model == ENSEMBLE_NAME:
        members: list[ModelDetector] = []
        try:
            for name in ENSEMBLE_MEMBERS:
                members.append(_model_detector(name, backend, repository, triton_url, threads))
        except BaseException:
            for member in members:
                member.close()
            raise
        # Fused scores average the members' scores, so the members' mean validated threshold is
        # the natural default; `mitoscope evaluate --val` measures a better one.
        threshold = float(np.mean([m.info.score_threshold for m in members]))
        return EnsembleDetector(members, [1.0] * len(members), threshold)
    return _model_detector(model, backend, repository, triton_url, threads)


def _model_detector(model: str, backend: str, repository: Path, triton_url: str, threads: int) -> ModelDetector:
    if backend == "triton":
        return ModelDetector(TritonBackend(triton_url, model))
    return ModelDetector(OnnxRuntimeBackend(resolve_model_path(model, repository), threads=threads))
