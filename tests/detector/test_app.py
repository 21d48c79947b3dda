"""The detector service over HTTP, in-process ONNX Runtime and a real Triton server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.common.messages import batch_to_message, detections_from_message
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.wire import PROTOBUF_CONTENT_TYPE
from services.detector.app import Settings, create_app
from services.detector.detector import open_detector
from services.detector.model import DEFAULT_MODEL_NAME
from services.detector.triton_server import TritonServer, free_port
from services.tiler.grid import Tile
from tests.conftest import MODEL_REPOSITORY, REPO_ROOT, TRITON_VENV

HEADERS = {"content-type": PROTOBUF_CONTENT_TYPE}


def _request(tiles: np.ndarray, model: str = "") -> bytes:
    batch = batch_to_message("slide-1", tuple(Tile(i, 0, i, i * 416, 0) for i in range(len(tiles))), tiles)
    return pb.DetectRequest(batch=batch, model=model).SerializeToString()


def _expected(tiles: np.ndarray) -> list[int]:
    """What the library answers: the detector confirmed by the default second stage."""
    detector = open_detector(DEFAULT_MODEL_NAME, "onnxruntime", MODEL_REPOSITORY, "", threads=1)
    counts = [len(t) for t in detector.detect(tiles)]
    detector.close()
    return counts


def test_detect_in_process_matches_the_library(e2e_tiles: np.ndarray) -> None:
    settings = Settings(backend="onnxruntime", model_repository=MODEL_REPOSITORY, onnxruntime_threads=1)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/detect", content=_request(e2e_tiles), headers=HEADERS)
        assert response.status_code == 200, response.text
        found = detections_from_message(pb.Detections.FromString(response.content))
        assert [len(found[i]) for i in range(len(e2e_tiles))] == _expected(e2e_tiles)
        assert all(found[i].mitosis_probabilities is not None for i in found if len(found[i]))
        described = client.get(f"/v1/models/{DEFAULT_MODEL_NAME}").json()
        assert described["input_size_px"] == 512 and described["class_names"] == ["mitosis", "atypical_mitosis"]
        unknown = client.post("/v1/detect", content=_request(e2e_tiles[:1], "nope"), headers=HEADERS)
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_model"
        wrong_size = client.post("/v1/detect", content=_request(np.zeros((1, 256, 256, 3), np.uint8)), headers=HEADERS)
        assert wrong_size.status_code == 422 and "expects uint8 tiles" in wrong_size.json()["message"]


def test_readiness_is_red_when_triton_is_down() -> None:
    settings = Settings(backend="triton", triton_url=f"127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
        assert client.get("/health/live").status_code == 200


@pytest.mark.integration
def test_detect_through_triton(triton_server: TritonServer, e2e_tiles: np.ndarray) -> None:
    with TestClient(create_app(Settings(backend="triton", triton_url=triton_server.grpc_url))) as client:
        assert client.get("/health/ready").status_code == 200
        response = client.post("/v1/detect", content=_request(e2e_tiles), headers=HEADERS)
        assert response.status_code == 200, response.text
        found = detections_from_message(pb.Detections.FromString(response.content))
        assert [len(found[i]) for i in range(len(e2e_tiles))] == _expected(e2e_tiles)


@pytest.mark.integration
def test_readiness_turns_red_when_triton_dies_after_serving(e2e_tiles: np.ndarray, tmp_path: Path) -> None:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton")
    server = TritonServer(MODEL_REPOSITORY, TRITON_VENV, REPO_ROOT / ".cache" / "triton", log_path=tmp_path / "t.log")
    server.start()
    try:
        with TestClient(create_app(Settings(backend="triton", triton_url=server.grpc_url))) as client:
            assert client.get("/health/ready").status_code == 200
            assert client.post("/v1/detect", content=_request(e2e_tiles[:2]), headers=HEADERS).status_code == 200
            server.stop()
            ready = client.get("/health/ready")
            assert ready.status_code == 503 and server.grpc_url in ready.json()["message"]
            failed = client.post("/v1/detect", content=_request(e2e_tiles[:2]), headers=HEADERS)
            assert failed.status_code == 503 and failed.json()["error"] == "inference_server_unavailable"
    finally:
        server.stop()
