"""Batch scoring of scanner output, in a folder and under a real S3 prefix (SeaweedFS): each new
slide once per content, when fully written; failures visible next to the slide."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mitoscope.pipeline import score_slide
from mitoscope.s3server import SeaweedS3
from services.common import objectstore
from services.common.objectstore import S3Config
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from services.watcher import LEDGER_NAME, FolderSource, InProcessScorer, S3PrefixSource, Watcher, WrittenSlide
from tests.conftest import MODEL_PATH


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scorer() -> Iterator[InProcessScorer]:
    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1))
    yield InProcessScorer(lambda path, out_dir, name: score_slide(path, out_dir, detector, display_name=name))
    detector.close()


class CountingFolder(FolderSource):
    """A folder source that counts how often it reads a file whole to hash it."""

    hashed: list[str]

    def sha256(self, slide: WrittenSlide) -> str:
        self.hashed.append(slide.name)
        return super().sha256(slide)


@pytest.fixture
def folder_watcher(tmp_path: Path, scorer: InProcessScorer) -> Watcher:
    source = CountingFolder(tmp_path, settle_s=5.0, clock=Clock())
    source.hashed = []
    return Watcher(source, scorer)


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
    for later in (50.0, 60.0, 70.0):
        clock.now = later
        assert folder_watcher.poll() == []
    hashed: list[str] = source.hashed  # type: ignore[attr-defined]
    assert sorted(hashed) == ["case-1-copy.svs", "case-1.svs"]  # each file read whole once, however many looks
    ledger = json.loads((source.folder / LEDGER_NAME).read_text())
    assert len(ledger["slides"]) == 1
    assert next(iter(ledger["slides"].values()))["duplicates"] == "case-1-copy.svs"
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
        objectstore.put_file("s3://scanner/inbox-archive/case-3.svs", small_slide, config)  # a sibling prefix
        source = S3PrefixSource("s3://scanner/inbox", config, tmp_path / "cache")
        hashed: list[str] = []
        real_sha256 = source.sha256
        source.sha256 = lambda slide: hashed.append(slide.name) or real_sha256(slide)  # type: ignore[method-assign]
        watcher = Watcher(source, scorer)

        assert sorted(_names(watcher.poll())) == ["broken.svs", "case-1.svs"]
        for _ in range(3):
            assert watcher.poll() == []  # nothing new: nothing scored
        assert sorted(hashed) == ["broken.svs", "case-1.svs", "day2/case-1-again.svs"]  # each object read once
        listed = {o.uri.removeprefix("s3://scanner/") for o in objectstore.list_objects("s3://scanner", config)}
        assert {"inbox/case-1.svs.mitoscope/result.json", "inbox/case-1.svs.mitoscope/overview.png"} <= listed
        assert not any(uri.startswith("inbox/day2/case-1-again.svs.mitoscope") for uri in listed)
        assert "elsewhere/case-2.svs.mitoscope/result.json" not in listed
        error = b"".join(objectstore.chunks("s3://scanner/inbox/broken.svs.mitoscope.error.txt", config)).decode()
        assert "broken.svs: not scored" in error and "not a whole-slide image" in error
        result = json.loads(b"".join(objectstore.chunks("s3://scanner/inbox/case-1.svs.mitoscope/result.json", config)))
        assert result["slide"]["name"] == "case-1.svs"
        ledger = json.loads(b"".join(objectstore.chunks(f"s3://scanner/inbox/{LEDGER_NAME}", config)))
        assert sorted(e["state"] for e in ledger["slides"].values()) == ["failed", "scored"]
        assert any(e.get("duplicates") == "day2/case-1-again.svs" for e in ledger["slides"].values())
        assert "inbox-archive/case-3.svs.mitoscope/result.json" not in listed


def test_a_job_that_failed_and_was_retried_clears_its_error(tmp_path: Path, small_slide: Path) -> None:
    class JobScorer:  # the gateway's scorer, with the job store's answers scripted
        def __init__(self) -> None:
            self.job_states = ["running", "failed", "queued", "succeeded"]

        def score(self, source: object, slide: WrittenSlide, digest: str) -> dict[str, str]:
            return {"state": "queued", "job": "job-1"}

        def follow(self, entry: dict[str, str]) -> dict[str, str]:
            job_state = self.job_states.pop(0)
            if job_state == "succeeded":
                return {**entry, "state": "scored"}
            if job_state == "failed":
                return {**entry, "state": "failed", "error": "detect: still failing after 600 s"}
            return entry

    clock = Clock()
    watcher = Watcher(FolderSource(tmp_path, settle_s=0.0, clock=clock), JobScorer(), follow_failed_every=1)
    shutil.copy(small_slide, tmp_path / "case.svs")
    error = tmp_path / "case.svs.mitoscope.error.txt"
    watcher.poll()  # notes the size
    assert _names(watcher.poll()) == ["case.svs"]  # queued as a job
    watcher.poll()  # the job runs
    watcher.poll()  # the job failed: the error is visible
    assert "still failing after 600 s" in error.read_text()
    watcher.poll()  # retried (POST /v1/jobs/{id}/retry): still shown as failed until it succeeds
    watcher.poll()  # succeeded
    assert not error.exists()
    ledger = json.loads((tmp_path / LEDGER_NAME).read_text())
    assert [e["state"] for e in ledger["slides"].values()] == ["scored"]


def test_one_unreadable_slide_does_not_hold_up_the_others(tmp_path: Path, small_slide: Path) -> None:
    from services.common.objectstore import ObjectStoreRefusedError, ObjectStoreUnavailableError

    class Scripted(FolderSource):  # store answers we cannot provoke from a folder: scripted per name
        def sha256(self, slide: WrittenSlide) -> str:
            if slide.name == "a-refused.svs":
                raise ObjectStoreRefusedError("s3://scanner/a-refused.svs: AccessDenied")
            if slide.name == "b-away.svs" and self.store_away:
                raise ObjectStoreUnavailableError("s3://scanner/b-away.svs: cannot reach the object store")
            return super().sha256(slide)

    class Recorder:
        def __init__(self) -> None:
            self.scored: list[str] = []

        def score(self, source: object, slide: WrittenSlide, digest: str) -> dict[str, str]:
            self.scored.append(slide.name)
            return {"state": "scored"}

        def follow(self, entry: dict[str, str]) -> dict[str, str]:
            return entry

    for name, seed_byte in (("a-refused.svs", b"a"), ("b-away.svs", b"b"), ("c-fine.svs", b"c")):
        (tmp_path / name).write_bytes(small_slide.read_bytes() + seed_byte)  # three different contents
    source = Scripted(tmp_path, settle_s=0.0, clock=Clock())
    source.store_away = True  # type: ignore[attr-defined]
    recorder = Recorder()
    watcher = Watcher(source, recorder)
    watcher.poll()
    assert _names(watcher.poll()) == ["a-refused.svs", "c-fine.svs"]  # the refused one recorded, c scored
    assert recorder.scored == ["c-fine.svs"]
    assert watcher.problems == ["b-away.svs: s3://scanner/b-away.svs: cannot reach the object store"]
    assert "AccessDenied" in (tmp_path / "a-refused.svs.mitoscope.error.txt").read_text()
    source.store_away = False  # type: ignore[attr-defined]
    assert _names(watcher.poll()) == ["b-away.svs"] and watcher.problems == []  # tried again, now scored
    assert watcher.poll() == [] and recorder.scored == ["c-fine.svs", "b-away.svs"]
