"""Option types, defaults and locations that several commands share."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

DEFAULT_TRITON_URL = "127.0.0.1:8001"


class BackendChoice(StrEnum):
    onnxruntime = "onnxruntime"
    triton = "triton"


def model_repository() -> Path:
    from services.common.files import REPO_ROOT

    return Path(os.environ.get("MITOSCOPE_MODEL_REPOSITORY", REPO_ROOT / "model_repository"))


def cache_dir() -> Path:
    """Where s3:// slides are cached for OpenSlide (bounded, content-addressed)."""
    return Path(os.environ.get("MITOSCOPE_CACHE_DIR", Path.home() / ".cache" / "mitoscope")) / "slides"
