"""Small facts every part needs, defined once: where the repository is, the code version, a file's SHA-256."""

from __future__ import annotations

import hashlib
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # services/common/files.py -> the checkout
HASH_CHUNK_BYTES = 8 * 1024 * 1024


@cache  # asked for every slide result (the aggregator too); the checkout does not change under us
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout (results record it)."""
    try:
        release = version("mitoscope")
    except PackageNotFoundError:
        release = "unknown"
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(
            git, cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{release}+{commit}" if commit else release


def file_sha256(path: Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks (slides are many GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
