"""Small file facts every part needs, defined once: where the repository is, a file's SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # services/common/files.py -> the checkout
HASH_CHUNK_BYTES = 8 * 1024 * 1024


def file_sha256(path: Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks (slides are many GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
