"""What the service knows about a model: read from the model itself, never hard-coded.

An ONNX model carries `mitoscope.*` entries in its `metadata_props` (see
`training/onnx_export.py`); Triton exposes the same entries as config `parameters`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.detector.errors import ModelError, UnknownModelError

METADATA_PREFIX = "mitoscope."
REQUIRED_KEYS = (
    "model_name",
    "model_version",
    "input_size_px",
    "mpp_um_per_px",
    "class_names",
    "output_format",
    "reinhard_target_lab",
)
CLASSIFIER_OUTPUT_FORMAT = "mitosis_atypical_probabilities"  # the second stage: (n, 2) probabilities
CLASSIFIER_MAX_BATCH = 256  # crops of 80 px: a whole tile batch's candidates fit in one call
SUPPORTED_OUTPUT_FORMATS = ("yolo_cxcywh_scores", "xyxy_score_class", CLASSIFIER_OUTPUT_FORMAT)
MAX_BOXES_PER_TILE = 100  # per-image models' boxes are padded to this many rows per tile
DEFAULT_MODEL_NAME = "yolov5n_mitosis"
DEFAULT_CLASSIFIER_NAME = "mitosis_classifier"  # the second stage; "none" turns it off
FALLBACK_SCORE_THRESHOLD = 0.25  # for models exported without a validated threshold


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_size_px: int
    mpp_um_per_px: float
    class_names: tuple[str, ...]
    output_format: str
    reinhard_target_lab: dict[str, list[float]]
    sha256: str
    score_threshold: float  # chosen on the validation split at training time
    extra: dict[str, str]

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], sha256: str, source: str) -> ModelInfo:
        props = {k[len(METADATA_PREFIX) :]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise ModelError(
                f"{source}: model metadata lacks {', '.join(METADATA_PREFIX + k for k in missing)}; "
                "export it with `training/onnx_export.py`"
            )
        if props["output_format"] not in SUPPORTED_OUTPUT_FORMATS:
            raise ModelError(f"{source}: unsupported output format {props['output_format']!r}")
        try:
            return cls(
                name=props["model_name"],
                version=props["model_version"],
                input_size_px=int(props["input_size_px"]),
                mpp_um_per_px=float(props["mpp_um_per_px"]),
                class_names=tuple(json.loads(props["class_names"])),
                output_format=props["output_format"],
                reinhard_target_lab=json.loads(props["reinhard_target_lab"]),
                sha256=props.get("model_sha256", sha256),
                score_threshold=float(props.get("score_threshold", FALLBACK_SCORE_THRESHOLD)),
                extra={k: v for k, v in props.items() if k not in (*REQUIRED_KEYS, "model_sha256", "score_threshold")},
            )
        except (ValueError, TypeError) as e:
            raise ModelError(f"{source}: malformed model metadata: {e}") from e


def resolve_model_path(model: str, repository: Path) -> Path:
    """`model` is a path to an .onnx file or a model name in the repository (latest version)."""
    as_path = Path(model)
    if as_path.suffix == ".onnx":
        if not as_path.is_file():
            raise UnknownModelError(f"{model}: no such model file")
        return as_path
    folder = repository / model
    versions = (
        sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit()), reverse=True) if folder.is_dir() else []
    )
    for version in versions:
        candidate = folder / str(version) / "model.onnx"
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []
    raise UnknownModelError(
        f"unknown model {model!r}: not an .onnx file and not in {repository} "
        f"(available: {', '.join(known) or 'none'}; `make models` trains the shipped one)"
    )
