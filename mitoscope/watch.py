"""Batch scoring of scanner output: score every new, fully written slide that lands in a folder.

A file counts as fully written once its size and modification time have not changed for
`settle_s` seconds. Slides are identified by content (SHA-256), so the same slide copied twice or
renamed is scored once; the ledger (`.mitoscope-watch.json` in the folder) remembers what was done.
Results go next to the slide (`<slide>.mitoscope/`); a failure writes `<slide>.mitoscope.error.txt`
with the reason and is not retried until the file changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mitoscope.pipeline import ScoreOptions, score_slide
from services.aggregator.errors import AggregatorError
from services.detector.detector import Detector
from services.detector.errors import DetectorError
from services.preprocess.errors import PreprocessError
from services.tiler.errors import TilerError

log = logging.getLogger(__name__)

LEDGER_NAME = ".mitoscope-watch.json"
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".dcm", ".vms", ".bif")
DEFAULT_SETTLE_S = 5.0
DEFAULT_POLL_S = 2.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FolderWatcher:
    folder: Path
    detector: Detector
    options: ScoreOptions = field(default_factory=ScoreOptions)
    settle_s: float = DEFAULT_SETTLE_S
    clock: Callable[[], float] = time.monotonic
    _seen: dict[Path, tuple[int, float, float]] = field(default_factory=dict)  # size, mtime, first seen stable

    @property
    def ledger_path(self) -> Path:
        return self.folder / LEDGER_NAME

    def _ledger(self) -> dict[str, dict[str, str]]:
        if not self.ledger_path.exists():
            return {}
        data: dict[str, dict[str, str]] = json.loads(self.ledger_path.read_text())
        return data

    def _save(self, ledger: dict[str, dict[str, str]]) -> None:
        tmp = self.ledger_path.with_name(LEDGER_NAME + ".tmp")
        tmp.write_text(json.dumps(ledger, indent=1))
        tmp.replace(self.ledger_path)

    def _settled(self, path: Path) -> bool:
        stat = path.stat()
        now = self.clock()
        size, mtime = stat.st_size, stat.st_mtime
        previous = self._seen.get(path)
        if previous is None or previous[:2] != (size, mtime):
            self._seen[path] = (size, mtime, now)
            return False
        return size > 0 and now - previous[2] >= self.settle_s

    def poll(self) -> list[Path]:
        """One pass over the folder; returns the slides scored (or failed) in this pass."""
        handled = []
        ledger = self._ledger()
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.suffix.lower() not in SLIDE_SUFFIXES or not self._settled(path):
                continue
            key = f"{path.stat().st_size}:{path.stat().st_mtime_ns}:{path.name}"
            if any(entry.get("file_key") == key for entry in ledger.values()):
                continue
            digest = _sha256(path)
            if digest in ledger:
                ledger[digest].setdefault("duplicates", "")
                ledger[digest]["duplicates"] = ",".join(filter(None, [ledger[digest]["duplicates"], path.name]))
                ledger[digest]["file_key"] = key
                self._save(ledger)
                log.info("%s has the content of %s, already scored", path.name, ledger[digest]["slide"])
                continue
            error_path = path.with_name(path.name + ".mitoscope.error.txt")
            try:
                score_slide(path, path.with_name(path.name + ".mitoscope"), self.detector, self.options)
                error_path.unlink(missing_ok=True)
                ledger[digest] = {"slide": path.name, "state": "scored", "file_key": key}
            except (TilerError, DetectorError, PreprocessError, AggregatorError) as e:
                error_path.write_text(f"{path.name}: not scored: {e}\n")
                ledger[digest] = {"slide": path.name, "state": "failed", "error": str(e), "file_key": key}
            self._save(ledger)
            handled.append(path)
        return handled
