"""Inference backends: the same uint8 batches in, the same raw model output back.

- `OnnxRuntimeBackend`: the model in this process (the embedded path).
- `TritonBackend`: a Triton Inference Server over gRPC; model metadata comes from the
  server's model config `parameters`, so the client never guesses input size or MPP.
All `onnxruntime` and `tritonclient` calls live in this module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.common.files import file_sha256
from services.detector.errors import (
    InferenceServerError,
    InferenceTimeoutError,
    ModelError,
    UnknownModelError,
)
from services.detector.model import MAX_BOXES_PER_TILE, ModelInfo

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "detections"
DEFAULT_SUB_BATCH = 8  # tiles per inference call: bounds memory and message size
DEFAULT_TRITON_TIMEOUT_S = 120.0  # one inference call
DEFAULT_TRITON_CONNECT_TIMEOUT_S = 5.0  # readiness and metadata calls


class DetectorBackend(Protocol):
    info: ModelInfo
    description: str

    def infer(self, tiles: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """(n, H, W, 3) uint8 normalised tiles (or crops) -> the model's raw output, e.g. (n, 4 + classes,
        anchors) for YOLO, (n, 2) for the crop classifier."""
        ...

    def close(self) -> None: ...


def _check_batch(tiles: npt.NDArray[np.uint8], info: ModelInfo) -> None:
    size = info.input_size_px
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (size, size, 3):
        raise ModelError(
            f"model {info.name} expects uint8 tiles of shape (n, {size}, {size}, 3), got {tiles.dtype} {tiles.shape}"
        )


def pad_boxes(per_tile: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """Per-tile [n, 6] box lists as one (tiles, MAX_BOXES_PER_TILE, 6) array, zero rows as padding."""
    padded = np.zeros((len(per_tile), MAX_BOXES_PER_TILE, 6), np.float32)
    for i, boxes in enumerate(per_tile):
        kept = boxes[:MAX_BOXES_PER_TILE]
        padded[i, : len(kept)] = kept
    return padded


class OnnxRuntimeBackend:
    def __init__(self, model_path: Path, threads: int = 0, sub_batch: int = DEFAULT_SUB_BATCH) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise ModelError(f"{model_path}: cannot load the ONNX model: {e}") from e
        names = [i.name for i in self._session.get_inputs()]
        if names != [INPUT_NAME]:
            raise ModelError(f"{model_path}: expected one input named {INPUT_NAME!r}, got {names}")
        self.output_name = self._session.get_outputs()[0].name  # detections, or a classifier's probabilities
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.info = ModelInfo.from_metadata(self.metadata, file_sha256(model_path), str(model_path))
        self.description = f"onnxruntime ({model_path.name}, {threads or 'all'} threads)"
        # torchvision detectors export one image per call: run those tile by tile.
        self._sub_batch = 1 if self._session.get_inputs()[0].shape[0] == 1 else sub_batch

    def infer(self, tiles: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        _check_batch(tiles, self.info)
        outputs = [
            self._session.run([self.output_name], {INPUT_NAME: tiles[i : i + self._sub_batch]})[0]
            for i in range(0, len(tiles), self._sub_batch)
        ]
        if self.info.output_format == "xyxy_score_class":
            return pad_boxes(outputs)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def close(self) -> None:
        del self._session


def triton_problems(url: str, model_name: str, timeout_s: float = DEFAULT_TRITON_CONNECT_TIMEOUT_S) -> list[str]:
    """What keeps Triton at `url` from serving `model_name` now (empty when it can).

    Asked afresh on every readiness probe: a connection opened earlier says nothing about
    whether the server is still there."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=url)
    try:
        if not client.is_server_ready(client_timeout=timeout_s):
            return [f"Triton at {url} is not ready"]
        if not client.is_model_ready(model_name, client_timeout=timeout_s):
            return [f"model {model_name!r} is not loaded in Triton at {url}"]
    except InferenceServerException as e:
        return [f"Triton at {url} is unreachable: {e}"]
    finally:
        client.close()
    return []


class TritonBackend:
    def __init__(
        self,
        url: str,
        model_name: str,
        timeout_s: float = DEFAULT_TRITON_TIMEOUT_S,
        sub_batch: int = DEFAULT_SUB_BATCH,
        connect_timeout_s: float = DEFAULT_TRITON_CONNECT_TIMEOUT_S,
    ) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        self._grpc = grpcclient
        self._error_type = InferenceServerException
        self._url, self._model, self._timeout_s, self._sub_batch = url, model_name, timeout_s, sub_batch
        self._client = grpcclient.InferenceServerClient(url=url)
        try:
            if not self._client.is_server_ready(client_timeout=connect_timeout_s):
                raise InferenceServerError(f"Triton at {url} is not ready")
            if not self._client.is_model_ready(model_name, client_timeout=connect_timeout_s):
                known = [m.name for m in self._client.get_model_repository_index().models]
                raise UnknownModelError(
                    f"model {model_name!r} is not loaded in Triton at {url} (loaded: {', '.join(known)})"
                )
            config = self._client.get_model_config(model_name, as_json=True, client_timeout=connect_timeout_s)
        except InferenceServerException as e:
            raise self._translate(e, connect_timeout_s) from e
        params = {k: v.get("string_value", "") for k, v in config["config"].get("parameters", {}).items()}
        self.info = ModelInfo.from_metadata(params, params.get("mitoscope.model_sha256", ""), f"triton:{model_name}")
        self.description = f"triton grpc ({url}, model {model_name})"
        outputs = config["config"].get("output", [])
        self.output_name = outputs[0]["name"] if outputs else OUTPUT_NAME
        # Without batching (max_batch_size 0: Faster R-CNN on the GPU) a call takes one tile and
        # returns its [n, 6] boxes.
        self._batched = int(config["config"].get("max_batch_size", 0)) > 0
        if not self._batched:
            self._sub_batch = 1

    def _translate(self, error: Exception, timeout_s: float) -> InferenceServerError:
        """`timeout_s`: the deadline of the call that failed (the connect or the inference one)."""
        status = str(getattr(error, "status", lambda: "")())
        if "DEADLINE_EXCEEDED" in status or "Deadline" in str(error):
            return InferenceTimeoutError(f"Triton at {self._url} did not answer within {timeout_s} s: {error}")
        return InferenceServerError(f"Triton at {self._url} failed: {error}")

    def infer(self, tiles: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        _check_batch(tiles, self.info)
        outputs = []
        for i in range(0, len(tiles), self._sub_batch):
            chunk = np.ascontiguousarray(tiles[i : i + self._sub_batch])
            request = self._grpc.InferInput(INPUT_NAME, list(chunk.shape), "UINT8")
            request.set_data_from_numpy(chunk)
            try:
                result = self._client.infer(
                    self._model,
                    [request],
                    outputs=[self._grpc.InferRequestedOutput(self.output_name)],
                    client_timeout=self._timeout_s,
                )
            except self._error_type as e:
                raise self._translate(e, self._timeout_s) from e
            outputs.append(result.as_numpy(self.output_name))
        if not self._batched:
            return pad_boxes(outputs)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def close(self) -> None:
        self._client.close()
