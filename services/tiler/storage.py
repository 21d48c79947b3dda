"""Where slides come from: a local path, or `s3://bucket/key` through the minio SDK.

OpenSlide needs a local file, so S3 objects are downloaded into a bounded, content-addressed
cache: `<cache>/sha256/<digest>/<name>`. An index keyed by (endpoint, bucket, key, ETag) avoids
downloading an unchanged object twice; the least recently used entries are evicted when the
cache exceeds its size bound. S3 calls go through `services.common.objectstore`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from services.common import objectstore
from services.common.files import file_sha256
from services.common.objectstore import S3Config, is_s3_uri
from services.tiler.errors import SlideNotFoundError, StorageRefusedError, StorageUnavailableError

log = logging.getLogger(__name__)

DEFAULT_CACHE_MAX_BYTES = 20 * 1024**3
DOWNLOAD_CHUNK_BYTES = 8 * 1024**2


class SlideCache:
    """Bounded, content-addressed local copies of remote slides."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        self._index_path = root / "index.json"

    def _index(self) -> dict[str, str]:
        if not self._index_path.exists():
            return {}
        try:
            data = json.loads(self._index_path.read_text())
        except json.JSONDecodeError:
            return {}  # a damaged index only costs a re-download
        return data if isinstance(data, dict) else {}

    def lookup(self, source_id: str) -> Path | None:
        path_str = self._index().get(source_id)
        if path_str and Path(path_str).is_file():
            os.utime(path_str)  # mark as recently used
            return Path(path_str)
        return None

    def store(self, source_id: str, downloaded: Path, name: str) -> Path:
        digest = file_sha256(downloaded)
        final = self.root / "sha256" / digest / Path(name).name
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            downloaded.unlink()
            os.utime(final)  # the same content again: mark it as recently used
        else:
            downloaded.replace(final)
        index = self._index()
        index[source_id] = str(final)
        _atomic_write(self._index_path, json.dumps(index))
        self.evict(keep=final)
        return final

    def evict(self, keep: Path) -> None:
        files = sorted((p for p in (self.root / "sha256").glob("*/*") if p.is_file()), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            total -= path.stat().st_size
            path.unlink()
            log.info("evicted %s from the slide cache", path.parent.name)


def _atomic_write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(text)
    Path(f.name).replace(path)


def fetch_s3(uri: str, cache: SlideCache, config: S3Config) -> Path:
    """Download `s3://bucket/key` into the cache (once per ETag) and return the local path."""
    try:
        found = objectstore.stat(uri, config)
        source_id = f"{config.endpoint}/{uri.removeprefix('s3://')}@{found.etag}"
        cached = cache.lookup(source_id)
        if cached is not None:
            return cached
        with tempfile.NamedTemporaryFile(dir=cache.root, suffix=".partial", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            objectstore.download(uri, tmp_path, config)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
    except objectstore.NoSuchObjectError as e:
        raise SlideNotFoundError(str(e)) from e
    except objectstore.ObjectStoreRefusedError as e:
        raise StorageRefusedError(str(e)) from e
    except objectstore.ObjectStoreUnavailableError as e:
        raise StorageUnavailableError(str(e)) from e
    return cache.store(source_id, tmp_path, uri.rsplit("/", 1)[-1])


def resolve_slide(location: str, cache: SlideCache | None = None) -> Path:
    """A local path for `location` (a path, or an s3:// URI fetched into the cache)."""
    if is_s3_uri(location):
        if cache is None:
            raise StorageUnavailableError(f"{location}: no slide cache configured for S3 downloads")
        try:
            config = S3Config.from_env()
        except objectstore.ObjectStoreUnavailableError as e:
            raise StorageUnavailableError(str(e)) from e
        return fetch_s3(location, cache, config)
    path = Path(location).expanduser()
    if not path.exists():
        raise SlideNotFoundError(f"{location}: no such file")
    return path
