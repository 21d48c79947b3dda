"""Batch scoring of a scanner folder: each new slide once, when fully written; failures visible."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mitoscope.watch import LEDGER_NAME, FolderWatcher
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from tests.conftest import MODEL_PATH


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watcher(tmp_path: Path) -> FolderWatcher:
    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH, threads=1))
    yield FolderWatcher(tmp_path, detector, settle_s=5.0, clock=Clock())
    detector.close()


def test_new_slides_are_scored_once_when_written(watcher: FolderWatcher, small_slide: Path) -> None:
    clock: Clock = watcher.clock  # type: ignore[assignment]
    target = watcher.folder / "case-1.svs"
    data = small_slide.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # the scanner is still writing
    assert watcher.poll() == []
    clock.now = 10.0
    with target.open("ab") as f:
        f.write(data[len(data) // 2 :])
    assert watcher.poll() == []  # changed since the last look: not settled yet
    clock.now = 20.0
    assert watcher.poll() == [target]
    assert (watcher.folder / "case-1.svs.mitoscope" / "result.json").is_file()
    clock.now = 30.0
    assert watcher.poll() == []  # never twice
    shutil.copy(target, watcher.folder / "case-1-copy.svs")
    watcher.poll()
    clock.now = 40.0
    assert watcher.poll() == []  # same content under another name: not scored again
    ledger = json.loads((watcher.folder / LEDGER_NAME).read_text())
    assert len(ledger) == 1 and "case-1-copy.svs" in next(iter(ledger.values()))["duplicates"]
    assert not (watcher.folder / "case-1-copy.svs.mitoscope").exists()


def test_a_bad_file_gets_a_visible_error_and_is_not_retried(watcher: FolderWatcher) -> None:
    clock: Clock = watcher.clock  # type: ignore[assignment]
    bad = watcher.folder / "broken.svs"
    bad.write_text("not a slide at all")
    watcher.poll()
    clock.now = 10.0
    assert watcher.poll() == [bad]
    error = watcher.folder / "broken.svs.mitoscope.error.txt"
    assert "not a whole-slide image" in error.read_text()
    clock.now = 20.0
    assert watcher.poll() == []
