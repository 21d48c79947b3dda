"""detector service: a model on Triton (or in-process ONNX Runtime) behind HTTP.

    uvicorn services.detector.app:create_app --factory --host 127.0.0.1 --port 8103

Detectors are opened on first use per model name and kept; model metadata (input size, MPP,
classes, threshold) comes from the model itself (Triton's config parameters or ONNX metadata).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.files import REPO_ROOT
from services.common.messages import batch_from_message, detections_to_message
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.web import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    message_response,
    read_message,
    service_app,
)
from services.detector.backends import triton_problems
from services.detector.classifier import NO_CLASSIFIER
from services.detector.detector import Detector, open_detector
from services.detector.errors import InferenceServerError, InferenceTimeoutError, ModelError, UnknownModelError
from services.detector.model import DEFAULT_CLASSIFIER_NAME, DEFAULT_MODEL_NAME


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETECTOR_")

    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    backend: Literal["triton", "onnxruntime"] = "triton"
    triton_url: str = "127.0.0.1:8001"
    model_repository: Path = REPO_ROOT / "model_repository"
    default_model: str = DEFAULT_MODEL_NAME
    classifier: str = DEFAULT_CLASSIFIER_NAME  # the second stage for every model; "none" turns it off
    onnxruntime_threads: int = 0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class Detectors:
    """Open detectors by model name, created on first use, closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._open: dict[str, Detector] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> Detector:
        name = model or self.settings.default_model
        with self._lock:
            if name not in self._open:
                s = self.settings
                self._open[name] = open_detector(
                    name, s.backend, s.model_repository, s.triton_url, s.onnxruntime_threads, s.classifier
                )
            return self._open[name]

    def problems(self) -> list[str]:
        s = self.settings
        if s.backend == "triton":
            models = [s.default_model] + ([s.classifier] if s.classifier != NO_CLASSIFIER else [])
            return [problem for model in models for problem in triton_problems(s.triton_url, model)]
        try:
            self.get(s.default_model)
        except (ModelError, InferenceServerError) as e:
            return [str(e)]
        return []

    def close(self) -> None:
        with self._lock:
            for detector in self._open.values():
                detector.close()
            self._open.clear()


class ModelDescription(BaseModel):
    name: str
    version: str
    sha256: str
    input_size_px: int
    mpp_um_per_px: float
    class_names: list[str]
    score_threshold: float
    output_format: str
    reinhard_target_lab: dict[str, list[float]]
    backend: str


def get_detectors(request: Request) -> Detectors:
    detectors: Detectors = request.app.state.detectors
    return detectors


DetectorsDep = Annotated[Detectors, Depends(get_detectors)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    detectors = Detectors(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        detectors.close()

    app = service_app(
        "detector",
        "Mitosis detection on normalised tile batches (protobuf bodies from "
        "`proto/mitoscope/v1/pipeline.proto`), on Triton or ONNX Runtime.",
        ready=detectors.problems,
        errors={
            UnknownModelError: (404, "unknown_model"),
            ModelError: (422, "bad_model_or_input"),
            InferenceTimeoutError: (504, "inference_timeout"),
            InferenceServerError: (503, "inference_server_unavailable"),
        },
        lifespan=lifespan,
        max_concurrent_requests=settings.max_concurrent_requests,
    )
    app.state.detectors = detectors

    @app.get("/v1/models/{model}", summary="What a model expects and reports", tags=["detector"])
    def describe(model: str, detectors: DetectorsDep) -> ModelDescription:
        detector = detectors.get(model)
        info = detector.info
        return ModelDescription(
            name=info.name,
            version=info.version,
            sha256=info.sha256,
            input_size_px=info.input_size_px,
            mpp_um_per_px=info.mpp_um_per_px,
            class_names=list(info.class_names),
            score_threshold=info.score_threshold,
            output_format=info.output_format,
            reinhard_target_lab=info.reinhard_target_lab,
            backend=detector.description,
        )

    @app.post("/v1/detect", summary="Boxes per tile for a normalised batch", response_class=Response, tags=["detector"])
    async def detect(request: Request, detectors: DetectorsDep) -> Response:
        message = await read_message(request, pb.DetectRequest, settings.max_body_bytes)
        detector = await run_in_threadpool(detectors.get, message.model)
        tiles, pixels = batch_from_message(message.batch)
        # Inference is CPU/GPU-bound: keep the event loop free for health checks and other requests.
        found = await run_in_threadpool(detector.detect, pixels, message.score_threshold or None)
        return message_response(detections_to_message(message.batch.slide_id, detector.info.name, tiles, found))

    return app
