"""Batch scoring of scanner output: score every new, fully written slide in a folder or S3 prefix.

A *source* lists the slides that are completely written: in a folder, a file whose size and
modification time have not changed for `settle_s` seconds; under an S3 prefix, every object (S3
makes an object visible only once its upload completed). Slides are identified by content
(SHA-256), so the same slide copied twice or renamed is scored once; the ledger
(`.mitoscope-watch.json` in the folder or under the prefix) remembers what was done.
Results go next to the slide (`<slide>.mitoscope/`); a failure writes
`<slide>.mitoscope.error.txt` with the reason and is not retried until the slide changes.

A *scorer* does the scoring: `InProcessScorer` here and now (`mitoscope watch`), or the gateway's
job scorer, which turns each slide into one durable job (`GATEWAY_WATCH_LOCATION`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mitoscope.pipeline import ScoreOptions, score_slide
from services.aggregator.errors import AggregatorError
from services.common import objectstore
from services.common.objectstore import ObjectStoreError, ObjectStoreUnavailableError, S3Config, is_s3_uri
from services.detector.detector import Detector
from services.detector.errors import DetectorError, InferenceServerError
from services.preprocess.errors import PreprocessError
from services.tiler.errors import StorageUnavailableError, TilerError
from services.tiler.storage import SlideCache, fetch_s3

log = logging.getLogger(__name__)

LEDGER_NAME = ".mitoscope-watch.json"
RESULTS_SUFFIX = ".mitoscope"
ERROR_SUFFIX = ".mitoscope.error.txt"
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".dcm", ".vms", ".bif")
DEFAULT_SETTLE_S = 5.0
DEFAULT_POLL_S = 2.0
DEFAULT_CACHE_DIR = Path(".cache/mitoscope/slides")
SCORED, FAILED, QUEUED = "scored", "failed", "queued"

ScoreInto = Callable[[Path, Path], None]  # score the local slide file into the results folder


@dataclass
class Ledger:
    """What the watcher has done: an entry per content (SHA-256) with the slide's name, state
    (scored, failed, queued), error and job; and every file version seen, so none is hashed twice."""

    slides: dict[str, dict[str, str]] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)  # "<name>@<version>" -> sha256

    @classmethod
    def from_json(cls, text: str | bytes) -> Ledger:
        data = json.loads(text)
        if "slides" not in data:  # the first format: only the entries, keyed by digest
            return cls(slides=data)
        return cls(slides=data["slides"], seen=data.get("seen", {}))

    def to_json(self) -> str:
        return json.dumps({"slides": self.slides, "seen": self.seen}, indent=1)


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


def _is_slide(name: str) -> bool:
    return name.lower().endswith(SLIDE_SUFFIXES)


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
            if path.is_file() and _is_slide(path.name) and (version := self._settled(path)) is not None:
                found.append(WrittenSlide(path.name, str(path), version))
        return found

    def sha256(self, slide: WrittenSlide) -> str:
        digest = hashlib.sha256()
        with Path(slide.location).open("rb") as f:
            while chunk := f.read(objectstore.CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

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
            if _is_slide(o.uri) and o.size_bytes > 0 and f"{RESULTS_SUFFIX}/" not in o.uri
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


class Scorer(Protocol):
    def score(self, source: SlideSource, slide: WrittenSlide, digest: str) -> dict[str, str]:
        """Score (or start scoring) one slide; the ledger entry: state scored, failed or queued."""
        ...

    def follow(self, entry: dict[str, str]) -> dict[str, str]:
        """The entry of a queued slide, updated (the same while it is still being scored)."""
        ...


@dataclass
class InProcessScorer:
    detector: Detector
    options: ScoreOptions = field(default_factory=ScoreOptions)

    def score(self, source: SlideSource, slide: WrittenSlide, digest: str) -> dict[str, str]:
        def score_into(local: Path, out_dir: Path) -> None:
            score_slide(local, out_dir, self.detector, self.options, display_name=slide.name)

        try:
            source.score_into_place(slide, score_into)
        except (StorageUnavailableError, ObjectStoreUnavailableError, InferenceServerError):
            raise  # not the slide's fault: it is tried again at the next look
        except (TilerError, DetectorError, PreprocessError, AggregatorError, ObjectStoreError) as e:
            return {"state": FAILED, "error": str(e)}
        return {"state": SCORED}

    def follow(self, entry: dict[str, str]) -> dict[str, str]:
        return entry


# Errors that are no slide's fault: the slide is tried again at a later look.
TRANSIENT_ERRORS = (ObjectStoreUnavailableError, StorageUnavailableError, InferenceServerError, OSError)
FOLLOW_FAILED_EVERY = 15  # looks between checks of failed jobs (one may have been retried since)


@dataclass
class Watcher:
    source: SlideSource
    scorer: Scorer
    follow_failed_every: int = FOLLOW_FAILED_EVERY
    problems: list[str] = field(default_factory=list)  # what kept slides from being handled at the last look
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)  # slide name -> its entry, last look
    _looks: int = 0

    def poll(self) -> list[WrittenSlide]:
        """One look: follows slides being scored as jobs, then handles the new ones.

        Returns the slides whose outcome (scored, failed, or queued as a job) was decided now.
        Each version of each file is hashed once; a content already handled is recorded as a
        duplicate. A slide that cannot be read now (store or inference server away) is left for
        a later look and named in `problems`; one the store refuses is recorded as failed. Only a
        failure to list the source or to read its ledger ends the look."""
        self.problems, self.outcomes = [], {}
        self._looks += 1
        ledger = self.source.load_ledger()
        slides = {s.name: s for s in self.source.slides()}
        changed = self._follow(ledger, slides, failed_too=self._looks % self.follow_failed_every in (0, 1))
        handled = []
        for slide in slides.values():
            if slide.seen_key in ledger.seen:
                continue
            try:
                outcome = self._handle(slide, ledger)
            except TRANSIENT_ERRORS as e:
                self.problems.append(f"{slide.name}: {e}")
                log.warning("%s: not handled this time: %s", slide.name, e)
                continue
            if outcome is None:
                changed = True
                continue
            self._report(slide, outcome)
            self.outcomes[slide.name] = outcome
            self.source.save_ledger(ledger)  # after each slide: a crash loses at most the one in hand
            changed = False
            handled.append(slide)
        if changed:
            self.source.save_ledger(ledger)
        return handled

    def _handle(self, slide: WrittenSlide, ledger: Ledger) -> dict[str, str] | None:
        """Hash and score one new slide version; its new ledger entry, or None for a duplicate."""
        try:
            digest = self.source.sha256(slide)
        except (objectstore.ObjectStoreRefusedError, objectstore.NoSuchObjectError) as e:
            digest = f"unreadable:{slide.seen_key}"  # recorded, so the look goes on to the next slide
            ledger.seen[slide.seen_key] = digest
            ledger.slides[digest] = {"slide": slide.name, "state": FAILED, "error": str(e)}
            return ledger.slides[digest]
        known = ledger.slides.get(digest)
        if known is not None:
            ledger.seen[slide.seen_key] = digest
            if slide.name != known["slide"] and slide.name not in known.get("duplicates", "").split(","):
                known["duplicates"] = ",".join(filter(None, [known.get("duplicates", ""), slide.name]))
            log.info("%s has the content of %s, already handled", slide.name, known["slide"])
            return None
        entry = {"slide": slide.name, **self.scorer.score(self.source, slide, digest)}
        ledger.seen[slide.seen_key] = digest  # only once scored: a transient failure is tried again
        ledger.slides[digest] = entry
        return entry

    def _follow(self, ledger: Ledger, slides: dict[str, WrittenSlide], failed_too: bool) -> bool:
        """Update slides scored as jobs: queued ones, and (now and then) failed ones whose job may
        have been retried."""
        changed = False
        for entry in ledger.slides.values():
            if "job" not in entry or entry["state"] == SCORED or (entry["state"] == FAILED and not failed_too):
                continue
            followed = self.scorer.follow(entry)
            if followed != entry:
                entry.clear()
                entry.update(followed)
                changed = True
                if (slide := slides.get(entry["slide"])) is not None:
                    self._report(slide, entry)
        return changed

    def _report(self, slide: WrittenSlide, entry: dict[str, str]) -> None:
        if entry["state"] == FAILED:
            self.source.write_error(slide, f"{slide.name}: not scored: {entry.get('error', 'unknown error')}")
        elif entry["state"] == SCORED:
            self.source.clear_error(slide)


def describe(entry: dict[str, str]) -> str:
    """One line for a person watching the console."""
    if entry["state"] == FAILED:
        return f"failed, see {entry['slide']}{ERROR_SUFFIX}"
    if entry["state"] == QUEUED:
        return f"queued as job {entry.get('job', '?')}"
    return f"scored, results in {entry['slide']}{RESULTS_SUFFIX}/"
