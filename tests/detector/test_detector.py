"""Detector: post-processing, model metadata, the Triton config and a real Triton round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.detector.backends import OnnxRuntimeBackend, TritonBackend
from services.detector.errors import ModelError, UnknownModelError
from services.detector.model import DEFAULT_CLASSIFIER_NAME, DEFAULT_MODEL_NAME, ModelInfo, resolve_model_path
from services.detector.postprocess import decode_yolo, nms
from services.detector.triton_repository import VARIANTS, config_paths, model_config
from services.detector.triton_server import TritonServer
from tests.conftest import MODEL_PATH, MODEL_REPOSITORY


def _raw(boxes: list[tuple[float, float, float, float, float]], anchors: int = 10) -> np.ndarray:
    """A one-class YOLO output (1, 5, anchors) holding the given (cx, cy, w, h, score) rows."""
    raw = np.zeros((1, 5, anchors), np.float32)
    for i, row in enumerate(boxes):
        raw[0, :, i] = row
    return raw


def test_decode_thresholds_and_suppresses_overlaps() -> None:
    raw = _raw([(100, 100, 50, 50, 0.9), (104, 102, 50, 50, 0.8), (300, 300, 40, 40, 0.6), (50, 50, 40, 40, 0.1)])
    (tile,) = decode_yolo(raw, score_threshold=0.25, iou_threshold=0.45)
    assert len(tile) == 2
    np.testing.assert_allclose(tile.boxes_px[0], [75, 75, 125, 125])
    np.testing.assert_allclose(tile.scores, [0.9, 0.6], rtol=1e-6)


def test_nms_keeps_boxes_that_only_touch() -> None:
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [1, 1, 11, 11]], np.float32)
    assert nms(boxes, np.array([0.5, 0.6, 0.4], np.float32), 0.45) == [1, 0]


def test_shipped_model_reports_its_metadata() -> None:
    backend = OnnxRuntimeBackend(MODEL_PATH, threads=1)
    info = backend.info
    backend.close()
    assert info.name == DEFAULT_MODEL_NAME
    assert info.input_size_px == 512 and info.mpp_um_per_px == 0.25
    assert info.class_names == ("mitosis",)
    assert set(info.reinhard_target_lab) == {"mean", "std"}
    assert MODEL_PATH.stat().st_size < 25 * 1024 * 1024


def test_unknown_model_names_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=DEFAULT_MODEL_NAME):
        resolve_model_path("nope", MODEL_REPOSITORY)
    with pytest.raises(UnknownModelError, match="no such model file"):
        resolve_model_path(str(tmp_path / "x.onnx"), MODEL_REPOSITORY)


def test_model_without_mitoscope_metadata_is_refused() -> None:
    with pytest.raises(ModelError, match=r"mitoscope\.input_size_px"):
        ModelInfo.from_metadata({"mitoscope.model_name": "x"}, "0" * 64, "x.onnx")


def test_wrong_tile_shape_is_refused() -> None:
    backend = OnnxRuntimeBackend(MODEL_PATH, threads=1)
    with pytest.raises(ModelError, match="expects uint8 tiles"):
        backend.infer(np.zeros((1, 256, 256, 3), np.uint8))
    backend.close()


@pytest.mark.parametrize("model", [DEFAULT_MODEL_NAME, DEFAULT_CLASSIFIER_NAME])
@pytest.mark.parametrize("variant", VARIANTS)
def test_committed_triton_configs_are_current_and_match_the_onnx_graph(variant: str, model: str) -> None:
    import onnx

    model_dir = MODEL_REPOSITORY / model
    onnx_path = model_dir / "1" / "model.onnx"
    committed = config_paths(model_dir)[variant].read_text()
    assert committed == model_config(model_dir, onnx_path, variant), (
        f"regenerate: python -m services.detector.triton_repository model_repository/{model}"
    )
    config = text_format.Parse(committed, model_config_pb2.ModelConfig())
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    onnx_dtypes = {
        onnx.TensorProto.UINT8: model_config_pb2.TYPE_UINT8,
        onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32,
    }
    assert [(i.name, i.data_type) for i in config.input] == [
        (i.name, onnx_dtypes[i.type.tensor_type.elem_type]) for i in graph.input
    ]
    assert [(o.name, o.data_type) for o in config.output] == [
        (o.name, onnx_dtypes[o.type.tensor_type.elem_type]) for o in graph.output
    ]
    assert config.parameters["mitoscope.model_name"].string_value == model
    if variant == "gpu":
        assert config.backend == "onnxruntime" and config.dynamic_batching.preferred_batch_size
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accelerator.name == "tensorrt"
    else:
        assert config.backend == "python"
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


@pytest.mark.integration
def test_triton_answers_like_onnxruntime(triton_server: TritonServer) -> None:
    tiles = np.random.default_rng(0).integers(0, 256, (3, 512, 512, 3), dtype=np.uint8)
    local = OnnxRuntimeBackend(MODEL_PATH, threads=1)
    remote = TritonBackend(triton_server.grpc_url, DEFAULT_MODEL_NAME)
    try:
        assert remote.info == local.info
        np.testing.assert_allclose(remote.infer(tiles), local.infer(tiles), atol=1e-4)
    finally:
        local.close()
        remote.close()


@pytest.mark.integration
def test_triton_unknown_model_is_a_clear_error(triton_server: TritonServer) -> None:
    with pytest.raises(UnknownModelError, match="not loaded in Triton"):
        TritonBackend(triton_server.grpc_url, "no_such_model")


def test_a_connect_timeout_names_the_connect_deadline_not_the_inference_one() -> None:
    import socket

    from services.detector.errors import InferenceTimeoutError

    silent = socket.socket()  # accepts TCP connections and never speaks gRPC
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(InferenceTimeoutError, match=r"did not answer within 0\.5 s"):
            TritonBackend(url, DEFAULT_MODEL_NAME, timeout_s=120.0, connect_timeout_s=0.5)
    finally:
        silent.close()
