"""Batch scoring of scanner output, in a folder and under a real S3 prefix (SeaweedFS): each new
slide once per content, when fully written; failures visible next to the slide."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mitoscope.s3server import SeaweedS3
from mitoscope.watch import LEDGER_NAME, FolderSource, InProcessScorer, S3PrefixSource, Watcher
from services.common import objectstore
from services.common.objectstore import S3Config
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from tests.conftest import MODEL_PATH


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scorer() -> Iterator[InProcessScorer]:
    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1))
    yield InProcessScorer(detector)
    detector.close()


@pytest.fixture
def folder_watcher(tmp_path: Path, scorer: InProcessScorer) -> Watcher:
    return Watcher(FolderSource(tmp_path, settle_s=5.0, clock=Clock()), scorer)


def _names(slides: list) -> list[str]:  # type: ignore[type-arg]
    return [s.name for s in slides]


def test_new_slides_are_scored_once_when_written(folder_watcher: Watcher, small_slide: Path) -> None:
    source: FolderSource = folder_watcher.source  # type: ignore[assignment]
    clock: Clock = source.clock  # type: ignore[assignment]
    target = source.folder / "case-1.svs"
    data = small_slide.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # the scanner is still writing
    assert folder_watcher.poll() == []
    clock.now = 10.0
    with target.open("ab") as f:
        f.write(data[len(data) // 2 :])
    assert folder_watcher.poll() == []  # changed since the last look: not settled yet
    clock.now = 20.0
    assert _names(folder_watcher.poll()) == ["case-1.svs"]
    assert (source.folder / "case-1.svs.mitoscope" / "result.json").is_file()
    clock.now = 30.0
    assert folder_watcher.poll() == []  # never twice
    shutil.copy(target, source.folder / "case-1-copy.svs")
    folder_watcher.poll()
    clock.now = 40.0
    assert folder_watcher.poll() == []  # same content under another name: not scored again
    ledger = json.loads((source.folder / LEDGER_NAME).read_text())
    assert len(ledger) == 1 and "case-1-copy.svs" in next(iter(ledger.values()))["duplicates"]
    assert not (source.folder / "case-1-copy.svs.mitoscope").exists()


def test_a_bad_file_gets_a_visible_error_and_is_not_retried(folder_watcher: Watcher) -> None:
    source: FolderSource = folder_watcher.source  # type: ignore[assignment]
    clock: Clock = source.clock  # type: ignore[assignment]
    bad = source.folder / "broken.svs"
    bad.write_text("not a slide at all")
    folder_watcher.poll()
    clock.now = 10.0
    assert _names(folder_watcher.poll()) == ["broken.svs"]
    error = source.folder / "broken.svs.mitoscope.error.txt"
    assert "not a whole-slide image" in error.read_text()
    clock.now = 20.0
    assert folder_watcher.poll() == []


@pytest.mark.integration
def test_an_s3_prefix_is_watched_like_a_folder(small_slide: Path, tmp_path: Path, scorer: InProcessScorer) -> None:
    with SeaweedS3(tmp_path / "s3") as server:
        config = S3Config(server.endpoint, server.access_key, server.secret_key)
        objectstore.make_bucket("scanner", config)
        objectstore.put_file("s3://scanner/inbox/case-1.svs", small_slide, config)
        objectstore.put_file("s3://scanner/inbox/day2/case-1-again.svs", small_slide, config)  # same content
        objectstore.put_bytes("s3://scanner/inbox/broken.svs", b"not a slide at all", "image/tiff", config)
        objectstore.put_bytes("s3://scanner/inbox/notes.txt", b"hello", "text/plain", config)
        objectstore.put_file("s3://scanner/elsewhere/case-2.svs", small_slide, config)  # outside the prefix
        source = S3PrefixSource("s3://scanner/inbox", config, tmp_path / "cache")
        watcher = Watcher(source, scorer)

        assert sorted(_names(watcher.poll())) == ["broken.svs", "case-1.svs"]
        assert watcher.poll() == []  # nothing new: nothing scored, nothing hashed twice
        listed = {o.uri.removeprefix("s3://scanner/") for o in objectstore.list_objects("s3://scanner", config)}
        assert {"inbox/case-1.svs.mitoscope/result.json", "inbox/case-1.svs.mitoscope/overview.png"} <= listed
        assert not any(uri.startswith("inbox/day2/case-1-again.svs.mitoscope") for uri in listed)
        assert "elsewhere/case-2.svs.mitoscope/result.json" not in listed
        error = b"".join(objectstore.chunks("s3://scanner/inbox/broken.svs.mitoscope.error.txt", config)).decode()
        assert "broken.svs: not scored" in error and "not a whole-slide image" in error
        result = json.loads(b"".join(objectstore.chunks("s3://scanner/inbox/case-1.svs.mitoscope/result.json", config)))
        assert result["slide"]["name"] == "case-1.svs"
        ledger = json.loads(b"".join(objectstore.chunks(f"s3://scanner/inbox/{LEDGER_NAME}", config)))
        assert sorted(e["state"] for e in ledger.values()) == ["failed", "scored"]
        assert any("case-1-again.svs" in e.get("duplicates", "") for e in ledger.values())
