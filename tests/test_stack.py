"""`mitoscope up` / `down`: the whole local stack on loopback scores a slide over REST."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.stack import Stack
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from tests.conftest import MODEL_PATH, REPO_ROOT, TRITON_VENV

pytestmark = pytest.mark.integration


def test_stack_up_scores_over_rest_and_down_stops_everything(e2e_slide: Path, tmp_path: Path) -> None:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton")
    stack = Stack(REPO_ROOT, tmp_path / "slides", tmp_path / "stack")
    urls = stack.up()
    try:
        gateway = urls["gateway"]
        slide = httpx.put(f"{gateway}/v1/slides/case.svs", content=e2e_slide.read_bytes(), timeout=60).json()
        job = httpx.post(f"{gateway}/v1/jobs", json={"slide_id": slide["id"], "options": {"batch_size": 16}}).json()
        deadline = time.monotonic() + 300
        while (state := httpx.get(f"{gateway}/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert state["state"] == "succeeded", state["error"]
        result = httpx.get(f"{gateway}/v1/jobs/{job['id']}/result").json()
        assert "triton" in httpx.get(f"{urls['detector']}/v1/models/yolov5n_mitosis").json()["backend"]
    finally:
        stopped = stack.down()
    assert set(stopped) == {"triton", "tiler", "preprocess", "detector", "aggregator", "gateway"}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{urls['gateway']}/health/live", timeout=2)
    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH))
    local = score_slide(e2e_slide, tmp_path / "local", detector, ScoreOptions(batch_size=16))
    detector.close()
    assert result["mitosis_count"] == local["mitosis_count"]
