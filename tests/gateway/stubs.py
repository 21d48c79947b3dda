"""Stand-ins for the tiler, preprocess, detector and aggregator, served over real HTTP on loopback.

Each stub answers with the smallest valid message of the real service's protocol, so the gateway
and its workers run unchanged against them. `StubScript` says what they answer: the slides the
tiler refuses (with the status and code the real tiler uses), and it records what the aggregator
was asked, so a test can check what the worker sent.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf.message import Message

from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.web import error_response
from services.common.wire import PROTOBUF_CONTENT_TYPE
from services.gateway.orchestrate import ServiceUrls

STUB_MODEL = "stub_model"
SLIDE_WIDTH_PX, SLIDE_HEIGHT_PX, SLIDE_MPP_UM_PER_PX = 2048, 1536, 0.25
TILES = 3
SERVER_START_TIMEOUT_S = 10.0


@dataclass
class StubScript:
    """What the stubs answer; a test may change it between requests."""

    # slide location -> (HTTP status, error code) the tiler answers for it, on every route
    tiler_errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    aggregated: list[pb.AggregateRequest] = field(default_factory=list)


def _message(message: Message) -> Response:
    return Response(message.SerializeToString(), media_type=PROTOBUF_CONTENT_TYPE)


def _tiler_error(script: StubScript, location: str) -> JSONResponse | None:
    if location not in script.tiler_errors:
        return None
    status, code = script.tiler_errors[location]
    return error_response(status, code, f"{location}: the stub tiler answers {status} {code}")


def tiler_app(script: StubScript) -> FastAPI:
    app = FastAPI(title="stub tiler")

    @app.post("/v1/plan", response_model=None)
    async def plan(request: Request) -> Response:
        body = await request.json()
        if (refused := _tiler_error(script, body["location"])) is not None:
            return refused
        return _message(
            pb.Plan(
                width_px=SLIDE_WIDTH_PX,
                height_px=SLIDE_HEIGHT_PX,
                mpp_um_per_px=SLIDE_MPP_UM_PER_PX,
                model_mpp_um_per_px=body["model_mpp_um_per_px"],
                tile_px=body["tile_px"],
                tiles=[pb.Tile(index=i, row=0, col=i, x_px=i * body["tile_px"]) for i in range(TILES)],
            )
        )

    @app.post("/v1/batch", response_model=None)
    async def batch(request: Request) -> Response:
        body = await request.json()
        if (refused := _tiler_error(script, body["location"])) is not None:
            return refused
        return _message(pb.TileBatch(slide_id=body["location"], tile_px=body["tile_px"]))

    @app.get("/v1/overview.png", response_model=None)
    def overview(location: str = Query()) -> Response:
        if (refused := _tiler_error(script, location)) is not None:
            return refused
        ok, png = cv2.imencode(".png", np.full((96, 128, 3), 255, np.uint8))
        assert ok
        return Response(png.tobytes(), media_type="image/png")

    return app


def preprocess_app() -> FastAPI:
    app = FastAPI(title="stub preprocess")

    @app.post("/v1/stats")
    def stats() -> Response:
        return _message(pb.LabStats(mean=[70.0, 10.0, -10.0], std=[10.0, 5.0, 5.0]))

    @app.post("/v1/normalise")
    async def normalise(request: Request) -> Response:
        return _message(pb.NormaliseRequest.FromString(await request.body()).batch)

    return app


def detector_app() -> FastAPI:
    app = FastAPI(title="stub detector")

    @app.get("/v1/models/{model}", response_model=None)
    def describe(model: str) -> dict[str, object] | JSONResponse:
        if model != STUB_MODEL:
            return error_response(404, "unknown_model", f"no model {model!r}")
        return {
            "name": STUB_MODEL,
            "version": "1",
            "sha256": "0" * 64,
            "backend": "stub",
            "input_size_px": 512,
            "mpp_um_per_px": 0.25,
            "class_names": ["mitosis"],
            "score_threshold": 0.5,
            "output_format": "boxes",
            "reinhard_target_lab": {"mean": [65.0, 15.0, -12.0], "std": [12.0, 6.0, 6.0]},
        }

    @app.post("/v1/detect")
    async def detect(request: Request) -> Response:
        message = pb.DetectRequest.FromString(await request.body())
        return _message(pb.Detections(slide_id=message.batch.slide_id, model=message.model))

    return app


def stub_result(message: pb.AggregateRequest) -> dict[str, object]:
    """A valid result document (one mitosis) for the slide of `message`."""
    return {
        "format": "mitoscope-result/1",
        "slide": {
            "name": message.slide_name,
            "width_px": message.plan.width_px,
            "height_px": message.plan.height_px,
            "mpp_um_per_px": message.plan.mpp_um_per_px,
            "mpp_source": "metadata",
            "vendor": "stub",
            "reader": "stub",
        },
        "mitosis_count": 1,
        "tissue_area_mm2": 0.1,
        "density_per_mm2": 10.0,
        "hotspot": {
            "x_px": 0.0,
            "y_px": 0.0,
            "width_px": 512.0,
            "height_px": 512.0,
            "count": 1,
            "window_area_mm2": 2.376,
            "tissue_area_mm2": 0.1,
            "fields": 10,
            "field_diameter_mm": message.field_diameter_mm,
            "count_per_mm2": 0.42,
        },
        "mitotic_score": 1,
        "atypical_count": 0,
        "atypical_fraction": 0.0,
        "detections": [
            {
                "id": 1,
                "x_px": 100.0,
                "y_px": 80.0,
                "box_px": [90.0, 70.0, 110.0, 90.0],
                "score": 0.9,
                "class": "mitosis",
                "tile_index": 0,
            }
        ],
        "qc": {"verdict": "ok", "checks": {}, "thresholds": {}, "excluded": [], "excluded_area_mm2": 0.0},
        "provenance": {
            "code_version": "stub",
            "model": {
                "name": STUB_MODEL,
                "version": "1",
                "sha256": "0" * 64,
                "input_size_px": 512,
                "mpp_um_per_px": 0.25,
                "class_names": ["mitosis"],
                "backend": "stub",
            },
            "normalisation": {
                "target_lab": {"mean": [60.0, 30.0, -15.0], "std": [14.0, 8.0, 7.5]},
                "source_lab": {"mean": [60.0, 30.0, -15.0], "std": [14.0, 8.0, 7.5]},
            },
            "parameters": {
                "mpp_override_um_per_px": None,
                "batch_size": message.batch_size,
                "overlap_px": message.plan.overlap_px,
                "score_threshold": 0.5,
                "merge_radius_um": message.merge_radius_um,
                "field_diameter_mm": message.field_diameter_mm,
            },
            "tiles": {"total": TILES, "with_detections": 1, "tile_px": 512, "overlap_px": 96, "rows": 1, "cols": 3},
        },
    }


def aggregator_app(script: StubScript) -> FastAPI:
    app = FastAPI(title="stub aggregator")

    @app.post("/v1/aggregate")
    async def aggregate(request: Request) -> Response:
        message = pb.AggregateRequest.FromString(await request.body())
        script.aggregated.append(message)
        return JSONResponse(stub_result(message))

    return app


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free loopback port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"serve {app.title}", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{app.title} did not start within {SERVER_START_TIMEOUT_S} s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SERVER_START_TIMEOUT_S)


@contextmanager
def stub_services(script: StubScript) -> Iterator[ServiceUrls]:
    with ExitStack() as stack:
        yield ServiceUrls(
            tiler=stack.enter_context(serve(tiler_app(script))),
            preprocess=stack.enter_context(serve(preprocess_app())),
            detector=stack.enter_context(serve(detector_app())),
            aggregator=stack.enter_context(serve(aggregator_app(script))),
        )


def unused_url() -> str:
    """A loopback URL nothing listens on: a service that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
