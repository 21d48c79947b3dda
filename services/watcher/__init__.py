"""Batch scoring of scanner output: score every new, fully written slide in a folder or S3 prefix.

A *source* (`sources.py`) lists the slides that are completely written. Slides are identified by
content (SHA-256), so the same slide copied twice or renamed is scored once; the ledger
(`ledger.py`, `.mitoscope-watch.json` in the folder or under the prefix) remembers what was done.
Results go next to the slide (`<slide>.mitoscope/`); a failure writes
`<slide>.mitoscope.error.txt` with the reason and is not retried until the slide changes.
The watcher (`watcher.py`) hands each new slide to a *scorer*: in process (`mitoscope watch`) or
as a gateway job (`GATEWAY_WATCH_LOCATION`).

This package imports no `mitoscope` code: the gateway uses it without loading the in-process scorer.
"""

from services.watcher.ledger import FAILED, LEDGER_NAME, QUEUED, SCORED, Ledger
from services.watcher.sources import (
    DEFAULT_CACHE_DIR,
    DEFAULT_SETTLE_S,
    ERROR_SUFFIX,
    RESULTS_SUFFIX,
    SLIDE_SUFFIXES,
    FolderSource,
    S3PrefixSource,
    ScoreInto,
    SlideSource,
    WrittenSlide,
    is_slide_name,
    open_source,
)
from services.watcher.watcher import (
    FOLLOW_FAILED_EVERY,
    TRANSIENT_ERRORS,
    InProcessScorer,
    ScoreFile,
    Scorer,
    Watcher,
    describe,
)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_SETTLE_S",
    "ERROR_SUFFIX",
    "FAILED",
    "FOLLOW_FAILED_EVERY",
    "LEDGER_NAME",
    "QUEUED",
    "RESULTS_SUFFIX",
    "SCORED",
    "SLIDE_SUFFIXES",
    "TRANSIENT_ERRORS",
    "FolderSource",
    "InProcessScorer",
    "Ledger",
    "S3PrefixSource",
    "ScoreFile",
    "ScoreInto",
    "Scorer",
    "SlideSource",
    "Watcher",
    "WrittenSlide",
    "describe",
    "is_slide_name",
    "open_source",
]
