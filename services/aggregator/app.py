"""aggregator service: every tile's detections to the slide result (count, hotspot, score).

    uvicorn services.aggregator.app:create_app --factory --host 127.0.0.1 --port 8104

Takes an `AggregateRequest` (protobuf: the tiler's plan and the detector's boxes) and answers a
`SlideResult` message (the public JSON result, typed); the GeoJSON rendering is one call away. With an
`output_location` it also writes result.json, .geojson, .csv (and overview.png when the request
carries the slide's picture) there (S3, or a folder under `AGGREGATOR_OUTPUT_ROOT`) and names them
under "exports" in the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.aggregator.errors import ExportLocationError, GradingParameterError
from services.aggregator.exports import geojson_document, publish
from services.aggregator.grading import DEFAULT_FIELD_DIAMETER_MM
from services.aggregator.merge import DEFAULT_MERGE_RADIUS_UM, merge_tile_detections
from services.aggregator.result import result_document, summarise
from services.common import objectstore
from services.common.messages import (
    add_model_provenance,
    detections_from_message,
    plan_from_message,
    result_to_message,
)
from services.common.objectstore import S3Config
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.web import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    message_response,
    read_message,
    service_app,
)
from services.common.wire import MessageError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGGREGATOR_")

    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    output_root: Path = Path("results")  # local output locations must lie under it


def aggregate(message: pb.AggregateRequest) -> dict[str, Any]:
    plan, tissue = plan_from_message(message.plan)
    per_tile = {}
    for detections in message.detections:
        per_tile.update(detections_from_message(detections))
    unknown = set(per_tile) - {t.index for t in plan.tiles}
    if unknown:
        raise MessageError(f"detections for tiles {sorted(unknown)[:5]} that are not in the plan")
    class_names = tuple(message.class_names) or ("mitosis",)
    radius_um = message.merge_radius_um or DEFAULT_MERGE_RADIUS_UM
    field_mm = message.field_diameter_mm or DEFAULT_FIELD_DIAMETER_MM
    merged = merge_tile_detections(plan, per_tile, class_names, radius_um)
    summary = summarise(merged, plan.slide_width_px, plan.slide_height_px, plan.slide_mpp_um_per_px, tissue, field_mm)
    slide = {
        "name": message.slide_name,
        "width_px": plan.slide_width_px,
        "height_px": plan.slide_height_px,
        "mpp_um_per_px": plan.slide_mpp_um_per_px,
    }
    provenance: dict[str, Any] = {
        "parameters": {"merge_radius_um": radius_um, "field_diameter_mm": field_mm},
        "tiles": {
            "total": len(plan.tiles),
            "with_detections": len(per_tile),
            "tile_px": plan.tile_px,
            "overlap_px": plan.overlap_px,
        },
    }
    add_model_provenance(provenance, message, list(class_names))
    qc = json.loads(message.plan.qc_json) if message.plan.qc_json else None
    return result_document(slide, summary, merged, provenance, qc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = service_app(
        "aggregator",
        "Merges tile detections (no double counting in overlaps), counts, finds the "
        "10-HPF hotspot and gives the Nottingham mitotic score.",
        ready=lambda: objectstore.problems(S3Config.from_env()) if S3Config.configured() else [],
        errors={
            GradingParameterError: (422, "bad_grading_parameter"),
            ExportLocationError: (422, "bad_output_location"),
            objectstore.NoSuchObjectError: (422, "bad_output_location"),
            objectstore.ObjectStoreRefusedError: (422, "bad_output_location"),
            objectstore.ObjectStoreUnavailableError: (503, "storage_unavailable"),
        },
        max_concurrent_requests=settings.max_concurrent_requests,
    )

    @app.post(
        "/v1/aggregate",
        summary="The slide result (a SlideResult message) from the plan and all detections",
        response_class=Response,
        tags=["aggregator"],
    )
    async def aggregate_route(request: Request) -> Response:
        message = await read_message(request, pb.AggregateRequest, settings.max_body_bytes)
        result = await run_in_threadpool(aggregate, message)
        if message.output_location:
            written = await run_in_threadpool(
                publish, result, message.output_location, settings.output_root, message.slide_png
            )
            result = {**result, "exports": written}
        return message_response(result_to_message(result))

    @app.post(
        "/v1/aggregate.geojson",
        summary="The same result as QuPath GeoJSON",
        tags=["aggregator"],
        response_class=Response,
    )
    async def aggregate_geojson(request: Request) -> Response:
        message = await read_message(request, pb.AggregateRequest, settings.max_body_bytes)
        document = geojson_document(await run_in_threadpool(aggregate, message))
        return Response(json.dumps(document), media_type="application/geo+json")

    return app
