"""Where slides come from: a local path, or `s3://bucket/key` through the minio SDK.

OpenSlide needs a local file, so S3 objects are downloaded into a bounded, content-addressed
cache: `<cache>/sha256/<digest>/<name>`. An index keyed by (endpoint, bucket, key, ETag) avoids
downloading an unchanged object twice; the least recently used entries are evicted when the
cache exceeds its size bound. All minio calls live in this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from services.tiler.errors import SlideNotFoundError, StorageError, StorageUnavailableError

log = logging.getLogger(__name__)

DEFAULT_CACHE_MAX_BYTES = 20 * 1024**3
DOWNLOAD_CHUNK_BYTES = 8 * 1024**2
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    secure: bool = False
    region: str | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    retries: int = DEFAULT_RETRIES

    @classmethod
    def from_env(cls) -> S3Config:
        endpoint = os.environ.get("MITOSCOPE_S3_ENDPOINT", "")
        if not endpoint:
            raise StorageUnavailableError(
                "an s3:// slide was given but MITOSCOPE_S3_ENDPOINT is not set "
                "(host:port of the S3 server, with MITOSCOPE_S3_ACCESS_KEY / _SECRET_KEY)"
            )
        return cls(
            endpoint=endpoint,
            access_key=os.environ.get("MITOSCOPE_S3_ACCESS_KEY", ""),
            secret_key=os.environ.get("MITOSCOPE_S3_SECRET_KEY", ""),
            secure=os.environ.get("MITOSCOPE_S3_SECURE", "false").lower() in ("1", "true", "yes"),
            region=os.environ.get("MITOSCOPE_S3_REGION") or None,
            connect_timeout_s=float(os.environ.get("MITOSCOPE_S3_CONNECT_TIMEOUT_S", DEFAULT_CONNECT_TIMEOUT_S)),
            read_timeout_s=float(os.environ.get("MITOSCOPE_S3_READ_TIMEOUT_S", DEFAULT_READ_TIMEOUT_S)),
            retries=int(os.environ.get("MITOSCOPE_S3_RETRIES", DEFAULT_RETRIES)),
        )


def is_s3_uri(location: str) -> bool:
    return location.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise SlideNotFoundError(f"{uri}: expected s3://bucket/key")
    return bucket, key


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
        digest = _sha256(downloaded)
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(text)
    Path(f.name).replace(path)


def _client(config: S3Config):  # type: ignore[no-untyped-def]
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s),
        retries=urllib3.Retry(total=config.retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(
        config.endpoint,
        access_key=config.access_key,
        secret_key=config.secret_key,
        secure=config.secure,
        region=config.region,
        http_client=http,
    )


def fetch_s3(uri: str, cache: SlideCache, config: S3Config) -> Path:
    """Download `s3://bucket/key` into the cache (once per ETag) and return the local path."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    bucket, key = parse_s3_uri(uri)
    try:
        client = _client(config)
        stat = client.stat_object(bucket, key)
    except ValueError as e:  # minio validates bucket and key names before any request
        raise SlideNotFoundError(f"{uri}: not a valid S3 location: {e}") from e
    except S3Error as e:
        raise _translate_s3_error(uri, e) from e
    except HTTPError as e:
        raise StorageUnavailableError(f"{uri}: cannot reach the object store at {config.endpoint}: {e}") from e
    source_id = f"{config.endpoint}/{bucket}/{key}@{stat.etag}"
    cached = cache.lookup(source_id)
    if cached is not None:
        return cached
    with tempfile.NamedTemporaryFile(dir=cache.root, suffix=".partial", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    part_path = Path(str(tmp_path) + ".download")
    try:
        client.fget_object(bucket, key, str(tmp_path), tmp_file_path=str(part_path))
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, S3Error):
            raise _translate_s3_error(uri, e) from e
        if isinstance(e, HTTPError):
            raise StorageUnavailableError(f"{uri}: download from {config.endpoint} failed: {e}") from e
        raise
    finally:
        part_path.unlink(missing_ok=True)
    return cache.store(source_id, tmp_path, key)


def _translate_s3_error(uri: str, error: Exception) -> StorageError:
    code = getattr(error, "code", "")
    if code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
        return SlideNotFoundError(f"{uri}: no such object ({code})")
    return StorageUnavailableError(f"{uri}: the object store refused the request: {code}: {error}")


def resolve_slide(location: str, cache: SlideCache | None = None) -> Path:
    """A local path for `location` (a path, or an s3:// URI fetched into the cache)."""
    if is_s3_uri(location):
        if cache is None:
            raise StorageUnavailableError(f"{location}: no slide cache configured for S3 downloads")
        return fetch_s3(location, cache, S3Config.from_env())
    path = Path(location).expanduser()
    if not path.exists():
        raise SlideNotFoundError(f"{location}: no such file")
    return path
