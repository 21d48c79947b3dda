"""What the gateway does besides answering requests: job workers in threads, and the watcher.

`GATEWAY_WORKER_THREADS` workers run jobs here (0 when separate worker processes do); with
`GATEWAY_WATCH_LOCATION` set, a watcher turns each new slide there into one job (`JobScorer`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.common.objectstore import ObjectStoreError, is_s3_uri
from services.gateway.jobs import FINAL_STATES, SUCCEEDED, JobStore, UnknownJobError
from services.gateway.schemas import JobOptions
from services.gateway.settings import Settings
from services.gateway.slides import SlideStore
from services.gateway.worker import run_worker, worker_config
from services.watcher import FAILED, QUEUED, SCORED, SlideSource, Watcher, WrittenSlide, open_source

IDLE_POLL_S = 0.5  # how often an idle worker thread looks for a new job
STOP_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


def local_location(path: str, slide_root: Path) -> str:
    """A watched local file's location as the services name it: relative to the slide root."""
    return str(Path(path).resolve().relative_to(slide_root.resolve()))


@dataclass
class JobScorer:
    """Turns each watched slide into one job (keyed by its SHA-256), its exports next to the slide."""

    settings: Settings
    slides: SlideStore
    jobs: JobStore

    def score(self, source: SlideSource, slide: WrittenSlide, digest: str) -> dict[str, str]:
        root = self.settings.slide_root
        location = slide.location if is_s3_uri(slide.location) else local_location(slide.location, root)
        results = source.results_location(slide)
        output = results if is_s3_uri(results) else local_location(results, root)
        self.slides.add(slide.name.rsplit("/", 1)[-1], location, digest, None)
        options = JobOptions(output_location=output).model_dump()
        # One job per content and place: the same slide in another watched place gets its own results.
        key = "watch:" + hashlib.sha256(f"{output}\n{digest}".encode()).hexdigest()
        job, _ = self.jobs.create(location, self.settings.default_model, options, key)
        return {"state": QUEUED, "job": job.id}

    def follow(self, entry: dict[str, str]) -> dict[str, str]:
        try:
            job = self.jobs.get(entry["job"])
        except UnknownJobError:  # the job database was replaced: nothing more to follow
            gone = {k: v for k, v in entry.items() if k != "job"}
            return {**gone, "state": FAILED, "error": f"job {entry['job']} no longer exists"}
        if job.state == SUCCEEDED:
            return {**{k: v for k, v in entry.items() if k != "error"}, "state": SCORED}
        if job.state in FINAL_STATES:
            return {**entry, "state": FAILED, "error": job.error or f"the job was {job.state}"}
        return entry


class BackgroundWork:
    def __init__(self, settings: Settings, slides: SlideStore, jobs: JobStore) -> None:
        self.settings, self.slides, self.jobs = settings, slides, jobs
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.settings.worker_threads):
            name = f"gateway-{uuid.uuid4().hex[:8]}-{i}"
            self._threads.append(threading.Thread(target=self._work, args=(name,), name=name, daemon=True))
        if self.settings.watch_location:
            watcher = Watcher(self._watch_source(), JobScorer(self.settings, self.slides, self.jobs))
            self._threads.append(threading.Thread(target=self._watch, args=(watcher,), name="watcher", daemon=True))
        for thread in self._threads:
            thread.start()

    def _watch_source(self) -> SlideSource:
        location = self.settings.watch_location
        if is_s3_uri(location):
            return open_source(location)
        folder = self.settings.slide_root / location
        folder.mkdir(parents=True, exist_ok=True)
        return open_source(str(folder), self.settings.watch_settle_s)

    def _watch(self, watcher: Watcher) -> None:
        while not self._stop.is_set():
            try:
                watcher.poll()
            except (ObjectStoreError, OSError) as e:  # the store or folder is away: look again later
                log.warning("watching %s: %s", self.settings.watch_location, e)
            except Exception:  # keep watching whatever one look met; the log says what
                log.exception("watching %s", self.settings.watch_location)
            self._stop.wait(self.settings.watch_poll_s)

    def _work(self, name: str) -> None:
        config, urls = worker_config(self.settings), self.settings.service_urls()
        while not self._stop.is_set():
            try:
                run_worker(self.jobs, name, urls, config, stop_when_idle=True)
            except Exception:  # keep the worker alive whatever one pass met; the log says what
                log.exception("worker %s", name)
            self._stop.wait(IDLE_POLL_S)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=STOP_TIMEOUT_S)
