"""A job survives killing its worker: a second worker resumes it from the checkpoints."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.stack import pipeline_services
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from services.detector.model import DEFAULT_MODEL_NAME
from services.gateway.jobs import SUCCEEDED, JobStore
from services.gateway.orchestrate import ServiceUrls
from tests.conftest import MODEL_PATH, MODEL_REPOSITORY, REPO_ROOT

pytestmark = pytest.mark.integration
LEASE_S = 3.0


def _worker(store_url: str, urls: ServiceUrls, name: str, log: Path, stop_when_idle: bool) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "services.gateway.worker",
        "--database",
        store_url,
        "--name",
        name,
        "--lease-s",
        str(LEASE_S),
        "--tiler",
        urls.tiler,
        "--preprocess",
        urls.preprocess,
        "--detector",
        urls.detector,
        "--aggregator",
        urls.aggregator,
    ]
    if stop_when_idle:
        command.append("--stop-when-idle")
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def test_killed_worker_is_resumed_without_loss_or_duplicates(
    store: JobStore,
    e2e_slide: Path,
    tmp_path: Path,
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(e2e_slide, slides / "case.svs")
    store_url = store.engine.url.render_as_string(hide_password=False)
    with ExitStack() as stack:
        urls = pipeline_services(
            stack,
            slides,
            tmp_path,
            {
                "DETECTOR_BACKEND": "onnxruntime",
                "DETECTOR_ONNXRUNTIME_THREADS": "1",
                "DETECTOR_MODEL_REPOSITORY": str(MODEL_REPOSITORY),
            },
        )
        job, _ = store.create("case.svs", DEFAULT_MODEL_NAME, {"batch_size": 8})
        first = _worker(store_url, urls, "worker-a", tmp_path / "worker-a.log", stop_when_idle=False)
        deadline = time.monotonic() + 120
        while len(store.checkpoints(job.id)) < 2:
            assert first.poll() is None, (tmp_path / "worker-a.log").read_text()
            assert time.monotonic() < deadline, "worker-a checkpointed nothing"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)  # the worker dies mid-job, without a word
        first.wait(10)
        done_by_first = set(store.checkpoints(job.id))
        assert store.get(job.id).state == "running"
        time.sleep(LEASE_S + 0.5)  # its lease runs out
        second = _worker(store_url, urls, "worker-b", tmp_path / "worker-b.log", stop_when_idle=True)
        assert second.wait(300) == 0, (tmp_path / "worker-b.log").read_text()
    finished = store.get(job.id)
    assert finished.state == SUCCEEDED and finished.attempts == 2, finished.error
    checkpoints = store.checkpoints(job.id)
    assert done_by_first <= set(checkpoints) and len(checkpoints) == (finished.tiles_total + 7) // 8
    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH))
    local = score_slide(slides / "case.svs", tmp_path / "local", detector, ScoreOptions(batch_size=8))
    detector.close()
    assert finished.result is not None
    assert finished.result["mitosis_count"] == local["mitosis_count"]
    remote_points = [(d["x_px"], d["y_px"]) for d in finished.result["detections"]]
    local_points = [(d["x_px"], d["y_px"]) for d in local["detections"]]
    assert len(remote_points) == len(local_points)
    for ours, theirs in zip(remote_points, local_points, strict=True):
        assert ours == pytest.approx(theirs, abs=0.5)
    assert len(set(remote_points)) == len(remote_points)  # no detection twice
