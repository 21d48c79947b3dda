"""A slide scored through the four services over real HTTP equals the in-process result."""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.stack import pipeline_services
from services.detector.detector import open_detector
from services.detector.model import DEFAULT_MODEL_NAME
from services.detector.triton_server import TritonServer
from services.gateway.orchestrate import ServiceError, score_via_services
from tests.conftest import MODEL_REPOSITORY

pytestmark = pytest.mark.integration


def test_services_over_http_give_the_in_process_result(
    e2e_slide: Path, triton_server: TritonServer, tmp_path: Path
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(e2e_slide, slides / "case.svs")
    with ExitStack() as stack:
        urls = pipeline_services(
            stack,
            slides,
            tmp_path,
            {
                "DETECTOR_BACKEND": "triton",
                "DETECTOR_TRITON_URL": triton_server.grpc_url,
                "DETECTOR_MODEL_REPOSITORY": str(MODEL_REPOSITORY),
            },
        )
        seen: list[tuple[int, int]] = []
        remote = score_via_services(
            "case.svs", urls, DEFAULT_MODEL_NAME, batch_size=16, progress=lambda done, total: seen.append((done, total))
        )
        with pytest.raises(ServiceError, match="HTTP 404"):
            score_via_services("missing.svs", urls, DEFAULT_MODEL_NAME)
    detector = open_detector(DEFAULT_MODEL_NAME, "onnxruntime", MODEL_REPOSITORY, "")  # both stages, as the service
    local = score_slide(slides / "case.svs", tmp_path / "local", detector, ScoreOptions(batch_size=16))
    detector.close()
    assert seen[-1][0] == seen[-1][1] == local["provenance"]["tiles"]["total"]
    assert remote["provenance"]["timing"]["seconds"] > 0  # timed like the in-process run
    # One result.json either way, apart from timing and the backend (Triton and ONNX Runtime agree to ~1e-4).
    assert_same_document(_comparable(remote), _comparable(local))
    assert remote["mitosis_count"] == local["mitosis_count"]
    assert remote["hotspot"]["count"] == local["hotspot"]["count"]
    assert remote["mitotic_score"] == local["mitotic_score"]
    for ours, theirs in zip(remote["detections"], local["detections"], strict=True):
        assert (ours["x_px"], ours["y_px"]) == pytest.approx((theirs["x_px"], theirs["y_px"]), abs=0.5)


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(document))
    del copy["provenance"]["timing"], copy["provenance"]["model"]["backend"]
    return copy


def assert_same_document(ours: Any, theirs: Any, where: str = "result") -> None:
    """Same keys and lengths everywhere; numbers equal within 1e-3, everything else exactly."""
    if isinstance(ours, dict):
        assert isinstance(theirs, dict) and sorted(ours) == sorted(theirs), where
        for key in ours:
            assert_same_document(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same_document(a, b, f"{where}[{i}]")
    elif isinstance(ours, float) or isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=1e-3), where
    else:
        assert ours == theirs, where
