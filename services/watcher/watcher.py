"""The watcher: each look at a source scores the slides that are new, once per content.

A *scorer* does the scoring: `InProcessScorer` here and now, with the scoring function it is
given (`mitoscope watch` passes the in-process pipeline), or the gateway's job scorer, which turns
each slide into one durable job (`GATEWAY_WATCH_LOCATION`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from services.common.errors import PermanentError, TransientError
from services.watcher.ledger import FAILED, QUEUED, SCORED, Ledger
from services.watcher.sources import ERROR_SUFFIX, RESULTS_SUFFIX, SlideSource, WrittenSlide

log = logging.getLogger(__name__)

# Score a local slide file into a results folder: (slide file, results folder, the slide's name for the result).
ScoreFile = Callable[[Path, Path, str], object]
# Errors that are no slide's fault (a store, the inference server or the folder away): the slide
# is tried again at a later look. A PermanentError is the slide's: it is recorded as failed.
TRANSIENT_ERRORS = (TransientError, OSError)
FOLLOW_FAILED_EVERY = 15  # looks between checks of failed jobs (one may have been retried since)


class Scorer(Protocol):
    def score(self, source: SlideSource, slide: WrittenSlide, digest: str) -> dict[str, str]:
        """Score (or start scoring) one slide; the ledger entry: state scored, failed or queued."""
        ...

    def follow(self, entry: dict[str, str]) -> dict[str, str]:
        """The entry of a queued slide, updated (the same while it is still being scored)."""
        ...


@dataclass
class InProcessScorer:
    """Scores each slide now, in this process, with `score_file`, its results next to the slide."""

    score_file: ScoreFile

    def score(self, source: SlideSource, slide: WrittenSlide, digest: str) -> dict[str, str]:
        try:  # a TransientError goes up: the watcher tries the slide again at the next look
            source.score_into_place(slide, lambda local, out_dir: self.score_file(local, out_dir, slide.name))
        except PermanentError as e:
            return {"state": FAILED, "error": str(e)}
        return {"state": SCORED}

    def follow(self, entry: dict[str, str]) -> dict[str, str]:
        return entry


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
        except PermanentError as e:  # the store refuses it, or it went away
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
