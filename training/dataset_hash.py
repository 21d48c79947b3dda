"""The training-data hash that travels in a model's metadata: what exactly it was trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path


def dataset_sha256(dataset_dir: Path) -> str:
    """SHA-256 over a YOLO dataset folder's labels (names and contents) and its Reinhard target."""
    digest = hashlib.sha256()
    for path in sorted((dataset_dir / "labels").rglob("*.txt")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update((dataset_dir / "target_lab.json").read_bytes())
    return digest.hexdigest()
