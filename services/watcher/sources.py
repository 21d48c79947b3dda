"""Where slides appear: a folder the scanner writes into, or an S3 prefix.

A source lists the slides that are completely written: in a folder, a file whose size and
modification time have not changed for `settle_s` seconds; under an S3 prefix, every object (S3
makes an object visible only once its upload completed). It also keeps the ledger and writes the
results and error files next to each slide.

`SLIDE_SUFFIXES` is the one list of slide file names: the gateway takes uploads and bucket
notifications by it too.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from services.common import objectstore
from services.common.files import file_sha256
from services.common.objectstore import S3Config, is_s3_uri
from services.tiler.storage import SlideCache, fetch_s3
from services.watcher.ledger import LEDGER_NAME, Ledger

# What the tiler opens (OpenSlide, tiffslide): Aperio, Hamamatsu, MIRAX, Leica, (OME-)TIFF, DICOM, Ventana.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".dcm", ".vms", ".vmu", ".bif")
RESULTS_SUFFIX = ".mitoscope"
ERROR_SUFFIX = ".mitoscope.error.txt"
DEFAULT_SETTLE_S = 5.0
DEFAULT_CACHE_DIR = Path(".cache/mitoscope/slides")

ScoreInto = Callable[[Path, Path], object]  # score the local slide file into the results folder


def is_slide_name(name: str) -> bool:
    """Whether a file or object name is one of a slide (by its suffix, in any case)."""
    return name.lower().endswith(SLIDE_SUFFIXES)


@dataclass(frozen=True)
class WrittenSlide:
    name: str  # relative to the folder or prefix: unique within the source
    location: str  # a local path, or s3://bucket/key
    version: str  # changes whenever the slide is rewritten (size and mtime, or the ETag)

    @property
    def seen_key(self) -> str:
        return f"{self.name}@{self.version}"


class SlideSource(Protocol):
    def slides(self) -> list[WrittenSlide]: ...
    def sha256(self, slide: WrittenSlide) -> str: ...
    def load_ledger(self) -> Ledger: ...
    def save_ledger(self, ledger: Ledger) -> None: ...
    def write_error(self, slide: WrittenSlide, message: str) -> None: ...
    def clear_error(self, slide: WrittenSlide) -> None: ...
    def results_location(self, slide: WrittenSlide) -> str: ...
    def score_into_place(self, slide: WrittenSlide, score: ScoreInto) -> None: ...


@dataclass
class FolderSource:
    folder: Path
    settle_s: float = DEFAULT_SETTLE_S
    clock: Callable[[], float] = time.monotonic
    _seen: dict[Path, tuple[int, int, float]] = field(default_factory=dict)  # size, mtime, first seen stable

    @property
    def ledger_path(self) -> Path:
        return self.folder / LEDGER_NAME

    def _settled(self, path: Path) -> str | None:
        stat = path.stat()
        now = self.clock()
        size, mtime = stat.st_size, stat.st_mtime_ns
        previous = self._seen.get(path)
        if previous is None or previous[:2] != (size, mtime):
            self._seen[path] = (size, mtime, now)
            return None
        return f"{size}:{mtime}" if size > 0 and now - previous[2] >= self.settle_s else None

    def slides(self) -> list[WrittenSlide]:
        found = []
        for path in sorted(self.folder.iterdir()):
            if path.is_file() and is_slide_name(path.name) and (version := self._settled(path)) is not None:
                found.append(WrittenSlide(path.name, str(path), version))
        return found

    def sha256(self, slide: WrittenSlide) -> str:
        return file_sha256(Path(slide.location))

    def load_ledger(self) -> Ledger:
        if not self.ledger_path.exists():
            return Ledger()
        return Ledger.from_json(self.ledger_path.read_text())

    def save_ledger(self, ledger: Ledger) -> None:
        tmp = self.ledger_path.with_name(LEDGER_NAME + ".tmp")
        tmp.write_text(ledger.to_json())
        tmp.replace(self.ledger_path)

    def write_error(self, slide: WrittenSlide, message: str) -> None:
        Path(slide.location + ERROR_SUFFIX).write_text(message + "\n")

    def clear_error(self, slide: WrittenSlide) -> None:
        Path(slide.location + ERROR_SUFFIX).unlink(missing_ok=True)

    def results_location(self, slide: WrittenSlide) -> str:
        return slide.location + RESULTS_SUFFIX

    def score_into_place(self, slide: WrittenSlide, score: ScoreInto) -> None:
        score(Path(slide.location), Path(self.results_location(slide)))  # score_slide swaps folders atomically


@dataclass
class S3PrefixSource:
    prefix: str  # s3://bucket/prefix
    config: S3Config
    cache_dir: Path = DEFAULT_CACHE_DIR  # local copies for in-process scoring (OpenSlide needs a file)

    @property
    def _folder(self) -> str:
        """The prefix as a folder: `s3://b/inbox` must not list `s3://b/inbox-archive/...`."""
        return self.prefix if self.prefix.endswith("/") or self.prefix.count("/") < 3 else self.prefix + "/"

    @property
    def ledger_uri(self) -> str:
        return f"{self._folder.rstrip('/')}/{LEDGER_NAME}"

    def slides(self) -> list[WrittenSlide]:
        folder = self._folder
        return [
            WrittenSlide(o.uri.removeprefix(folder).lstrip("/"), o.uri, f"{o.size_bytes}:{o.etag}")
            for o in objectstore.list_objects(folder, self.config)
            if is_slide_name(o.uri) and o.size_bytes > 0 and f"{RESULTS_SUFFIX}/" not in o.uri
        ]

    def sha256(self, slide: WrittenSlide) -> str:
        digest = hashlib.sha256()
        for chunk in objectstore.chunks(slide.location, self.config):
            digest.update(chunk)
        return digest.hexdigest()

    def load_ledger(self) -> Ledger:
        try:
            return Ledger.from_json(b"".join(objectstore.chunks(self.ledger_uri, self.config)))
        except objectstore.NoSuchObjectError:
            return Ledger()

    def save_ledger(self, ledger: Ledger) -> None:
        objectstore.put_bytes(self.ledger_uri, ledger.to_json().encode(), "application/json", self.config)

    def write_error(self, slide: WrittenSlide, message: str) -> None:
        objectstore.put_bytes(slide.location + ERROR_SUFFIX, (message + "\n").encode(), "text/plain", self.config)

    def clear_error(self, slide: WrittenSlide) -> None:
        objectstore.delete(slide.location + ERROR_SUFFIX, self.config)  # S3 deletes are idempotent

    def results_location(self, slide: WrittenSlide) -> str:
        return slide.location + RESULTS_SUFFIX

    def score_into_place(self, slide: WrittenSlide, score: ScoreInto) -> None:
        local = fetch_s3(slide.location, SlideCache(self.cache_dir), self.config)
        with tempfile.TemporaryDirectory(prefix="mitoscope-watch-") as tmp:
            out = Path(tmp) / "out"
            score(local, out)
            files = sorted(out.iterdir(), key=lambda p: p.name == "result.json")  # result.json last
            for path in files:
                objectstore.put_file(f"{self.results_location(slide)}/{path.name}", path, self.config)


def open_source(location: str, settle_s: float = DEFAULT_SETTLE_S, cache_dir: Path | None = None) -> SlideSource:
    """A folder, or an `s3://bucket/prefix` (credentials from MITOSCOPE_S3_*)."""
    if is_s3_uri(location):
        return S3PrefixSource(location, S3Config.from_env(), cache_dir or DEFAULT_CACHE_DIR)
    return FolderSource(Path(location), settle_s)
