"""Object storage through the minio SDK: every S3 call of mitoscope lives in this module.

Locations are `s3://bucket/key` URIs. The endpoint and credentials come from the environment
(`MITOSCOPE_S3_ENDPOINT` host:port, `MITOSCOPE_S3_ACCESS_KEY`, `MITOSCOPE_S3_SECRET_KEY`, ...), the
same for every service, so one `s3://` location means the same object wherever it is passed.
Calls have bounded timeouts and retries; an unreachable store is `ObjectStoreUnavailableError`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from services.common.errors import PermanentError, TransientError

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 2
READINESS_TIMEOUT_S = 2.0
CHUNK_BYTES = 8 * 1024**2
MULTIPART_PART_BYTES = 16 * 1024**2


# The answers that mean "not with these keys, names or permissions": retrying will not help.
# Anything else the store answers (SlowDown, RequestTimeout, 5xx, a 403 while a restarting
# server loads its identities) is treated as unavailable and retried.
REFUSALS = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "InvalidObjectName",
        "KeyTooLongError",
        "InvalidObjectState",
        "EntityTooLarge",
        "MethodNotAllowed",
        "InvalidArgument",
    }
)


class ObjectStoreError(Exception):
    """Base class of object storage errors; messages name the location."""


class NoSuchObjectError(ObjectStoreError, PermanentError):
    """No object (or bucket) at the location."""


class ObjectStoreUnavailableError(ObjectStoreError, TransientError):
    """The object store did not answer, failed (5xx), or is not configured: worth retrying later."""


class ObjectStoreRefusedError(ObjectStoreError, PermanentError):
    """The object store answered and refused (access denied, bad keys, invalid name): not transient."""


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
    def configured(cls) -> bool:
        return bool(os.environ.get("MITOSCOPE_S3_ENDPOINT"))

    @classmethod
    def from_env(cls) -> S3Config:
        endpoint = os.environ.get("MITOSCOPE_S3_ENDPOINT", "")
        if not endpoint:
            raise ObjectStoreUnavailableError(
                "an s3:// location was given but MITOSCOPE_S3_ENDPOINT is not set "
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

    def env(self) -> dict[str, str]:
        """The environment that makes `from_env` give this configuration (for child processes):
        `S3Config.from_env()` under `env()` equals the configuration, every field included."""
        env = {
            "MITOSCOPE_S3_ENDPOINT": self.endpoint,
            "MITOSCOPE_S3_ACCESS_KEY": self.access_key,
            "MITOSCOPE_S3_SECRET_KEY": self.secret_key,
            "MITOSCOPE_S3_SECURE": str(self.secure).lower(),
            "MITOSCOPE_S3_CONNECT_TIMEOUT_S": repr(self.connect_timeout_s),
            "MITOSCOPE_S3_READ_TIMEOUT_S": repr(self.read_timeout_s),
            "MITOSCOPE_S3_RETRIES": str(self.retries),
        }
        if self.region:
            env["MITOSCOPE_S3_REGION"] = self.region
        return env


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size_bytes: int
    etag: str
    modified: datetime | None


def is_s3_uri(location: str) -> bool:
    return location.startswith("s3://")


def parse_s3_uri(uri: str, key_required: bool = True) -> tuple[str, str]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not bucket or (key_required and not key):
        raise NoSuchObjectError(f"{uri}: expected s3://bucket/key")
    return bucket, key


def client(config: S3Config) -> Any:
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


class _Translated:
    """Turns minio and urllib3 errors inside a `with` block into ObjectStoreErrors naming `uri`."""

    def __init__(self, uri: str, config: S3Config) -> None:
        self.uri, self.config = uri, config

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        if exc is None or isinstance(exc, ObjectStoreError):
            return
        if isinstance(exc, S3Error):
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise NoSuchObjectError(f"{self.uri}: no such object ({exc.code})") from exc
            if exc.code in REFUSALS:
                raise ObjectStoreRefusedError(
                    f"{self.uri}: the object store at {self.config.endpoint} refused: {exc.code}: {exc.message}"
                ) from exc
            raise ObjectStoreUnavailableError(f"{self.uri}: the object store failed: {exc}") from exc
        if isinstance(exc, MinioException | HTTPError):  # no S3 answer: a proxy page, a reset, a timeout
            raise ObjectStoreUnavailableError(
                f"{self.uri}: cannot reach the object store at {self.config.endpoint}: {exc}"
            ) from exc
        if isinstance(exc, ValueError):  # minio validates bucket and key names before any request
            raise NoSuchObjectError(f"{self.uri}: not a valid S3 location: {exc}") from exc


def stat(uri: str, config: S3Config) -> ObjectInfo:
    bucket, key = parse_s3_uri(uri)
    with _Translated(uri, config):
        found = client(config).stat_object(bucket, key)
        return ObjectInfo(uri, int(found.size or 0), str(found.etag), found.last_modified)


def download(uri: str, destination: Path, config: S3Config) -> None:
    """Download to `destination` through a `.part` file beside it, removed whatever happens."""
    bucket, key = parse_s3_uri(uri)
    part = destination.with_name(destination.name + ".part")
    try:
        with _Translated(uri, config):
            client(config).fget_object(bucket, key, str(destination), tmp_file_path=str(part))
    finally:
        part.unlink(missing_ok=True)


def chunks(uri: str, config: S3Config) -> Iterator[bytes]:
    """The object's bytes, streamed in bounded chunks."""
    bucket, key = parse_s3_uri(uri)
    with _Translated(uri, config):
        response = client(config).get_object(bucket, key)
        try:
            yield from response.stream(CHUNK_BYTES)
        finally:
            response.close()
            response.release_conn()


def put_bytes(uri: str, data: bytes, content_type: str, config: S3Config) -> None:
    bucket, key = parse_s3_uri(uri)
    with _Translated(uri, config):
        client(config).put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def put_file(uri: str, path: Path, config: S3Config, content_type: str = "application/octet-stream") -> None:
    bucket, key = parse_s3_uri(uri)
    with _Translated(uri, config):
        client(config).fput_object(bucket, key, str(path), content_type=content_type, part_size=MULTIPART_PART_BYTES)


def delete(uri: str, config: S3Config) -> None:
    bucket, key = parse_s3_uri(uri)
    with _Translated(uri, config):
        client(config).remove_object(bucket, key)


def list_objects(prefix_uri: str, config: S3Config) -> list[ObjectInfo]:
    """Objects under `s3://bucket/prefix` (recursively), in key order."""
    bucket, prefix = parse_s3_uri(prefix_uri, key_required=False)
    with _Translated(prefix_uri, config):
        found = client(config).list_objects(bucket, prefix=prefix or None, recursive=True)
        return [
            ObjectInfo(f"s3://{bucket}/{o.object_name}", int(o.size or 0), str(o.etag), o.last_modified)
            for o in found
            if not o.is_dir
        ]


def make_bucket(bucket: str, config: S3Config) -> None:
    """Create `bucket` unless it exists."""
    with _Translated(f"s3://{bucket}", config):
        s3 = client(config)
        if not s3.bucket_exists(bucket):
            s3.make_bucket(bucket)


def problems(config: S3Config) -> list[str]:
    """What keeps the object store from serving now (empty when it answers), for readiness.

    Any S3 answer counts, a refusal included: a key without ListAllMyBuckets is still served."""
    quick = replace(config, connect_timeout_s=READINESS_TIMEOUT_S, read_timeout_s=READINESS_TIMEOUT_S, retries=0)
    try:
        with _Translated(f"s3://{config.endpoint}", quick):
            client(quick).list_buckets()
    except ObjectStoreUnavailableError as e:
        return [str(e)]
    except ObjectStoreError:
        pass  # it answered
    return []
