"""Triton down: readiness goes red, a job waits and resumes when it is back, or fails with the reason
past its retry budget, and a retried job finishes from its checkpoints with the in-process result."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.stack import pipeline_services
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from services.detector.model import DEFAULT_MODEL_NAME
from services.detector.triton_server import TritonServer, free_port
from services.gateway.database import make_engine
from services.gateway.jobs import FAILED, RUNNING, SUCCEEDED, JobStore
from services.gateway.orchestrate import ServiceUrls
from services.gateway.worker import RetryPolicy, WorkerConfig, run_worker
from tests.conftest import MODEL_PATH, MODEL_REPOSITORY, REPO_ROOT, TRITON_VENV

pytestmark = pytest.mark.integration


def _work(store: JobStore, urls: ServiceUrls, budget_s: float) -> threading.Thread:
    thread = threading.Thread(
        target=run_worker,
        args=(store, "worker", urls),
        kwargs={
            "config": WorkerConfig(
                lease_s=10.0, retry=RetryPolicy(budget_s=budget_s, first_delay_s=0.5, max_delay_s=2.0)
            ),
            "stop_when_idle": True,
        },
    )
    thread.start()
    return thread


def _detect_calls(detector_url: str) -> int:
    """Successful /v1/detect requests the detector has served, from its Prometheus metrics."""
    total = 0
    for line in httpx.get(f"{detector_url}/metrics").text.splitlines():
        if (
            line.startswith("mitoscope_http_requests_total{")
            and 'route="/v1/detect"' in line
            and 'status="200"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_jobs_wait_out_triton_and_resume_from_checkpoints(e2e_slide: Path, tmp_path: Path) -> None:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton")
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(e2e_slide, slides / "case.svs")
    port = free_port()

    def triton() -> TritonServer:
        server = TritonServer(
            MODEL_REPOSITORY, TRITON_VENV, REPO_ROOT / ".cache" / "triton", grpc_port=port, log_path=tmp_path / "t.log"
        )
        server.start()
        return server

    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    store = JobStore(engine)
    detector_env = {"DETECTOR_BACKEND": "triton", "DETECTOR_TRITON_URL": f"127.0.0.1:{port}"}
    with ExitStack() as stack:
        urls = pipeline_services(stack, slides, tmp_path, detector_env)

        # 1. Triton is not up yet: readiness is red and the job waits instead of failing.
        waiting, _ = store.create("case.svs", DEFAULT_MODEL_NAME, {"batch_size": 16})
        worker = _work(store, urls, budget_s=120)
        time.sleep(3)
        assert httpx.get(f"{urls.detector}/health/ready").status_code == 503
        job = store.get(waiting.id)
        assert job.state == RUNNING and job.error is None and job.tiles_done == 0
        server = triton()
        stack.callback(lambda: server.stop())  # late-bound: stops whichever server runs at the end
        worker.join(300)
        assert store.get(waiting.id).state == SUCCEEDED
        assert httpx.get(f"{urls.detector}/health/ready").status_code == 200

        # 2. Triton dies mid-job: past a short budget the job fails with the reason, its batches kept.
        interrupted, _ = store.create("case.svs", DEFAULT_MODEL_NAME, {"batch_size": 8})
        worker = _work(store, urls, budget_s=4)
        deadline = time.monotonic() + 120
        while len(store.checkpoints(interrupted.id)) < 2:
            assert time.monotonic() < deadline, "no batch was checkpointed"
            time.sleep(0.05)
        server.stop()
        worker.join(120)
        failed = store.get(interrupted.id)
        assert failed.state == FAILED and failed.error is not None
        assert "still failing after" in failed.error and f"127.0.0.1:{port}" in failed.error
        kept = store.checkpoints(interrupted.id)
        assert len(kept) >= 2

        # 3. Triton is back; the retried job computes only what is missing.
        server = triton()
        detected_before = _detect_calls(urls.detector)
        store.requeue(interrupted.id)
        worker = _work(store, urls, budget_s=60)
        worker.join(300)
        detected_on_retry = _detect_calls(urls.detector) - detected_before
    engine.dispose()
    finished = store.get(interrupted.id)
    assert finished.state == SUCCEEDED and finished.result is not None, finished.error
    checkpoints = store.checkpoints(interrupted.id)
    assert all(checkpoints[i] == payload for i, payload in kept.items())  # nothing lost
    assert detected_on_retry == len(checkpoints) - len(kept)  # only the missing batches were detected
    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH))
    local = score_slide(slides / "case.svs", tmp_path / "local", detector, ScoreOptions(batch_size=8))
    detector.close()
    assert finished.result["mitosis_count"] == local["mitosis_count"]
    points = [(d["x_px"], d["y_px"]) for d in finished.result["detections"]]
    assert len(set(points)) == len(points) == len(local["detections"])
    waited = store.get(waiting.id).result
    assert waited is not None and waited["mitosis_count"] == local["mitosis_count"]
