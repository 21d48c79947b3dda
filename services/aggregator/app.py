"""aggregator service: every tile's detections to the slide result (count, hotspot, score).

    uvicorn services.aggregator.app:create_app --factory --host 127.0.0.1 --port 8104

Takes an `AggregateRequest` (protobuf: the tiler's plan and the detector's boxes) and answers the
public JSON result (`services/aggregator/schema.py`'s `SlideResult`, built by the same
`build_result` the embedded pipeline uses); the GeoJSON rendering is one call away. With an
`output_location` it also writes result.json, .geojson, .csv (and overview.png when the request
carries the slide's picture) there (S3, or a folder under `AGGREGATOR_OUTPUT_ROOT`) and names them
under "exports" in the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.aggregator.errors import ExportLocationError, GradingParameterError
from services.aggregator.exports import geojson_document, publish
from services.aggregator.grading import DEFAULT_FIELD_DIAMETER_MM
from services.aggregator.merge import DEFAULT_MERGE_RADIUS_UM, merge_tile_detections
from services.aggregator.result import build_result, make_provenance, parameters_of, summarise, timing_of
from services.aggregator.schema import ModelProvenance, SlideFacts, SlideResult
from services.common import objectstore
from services.common.messages import detections_from_message, plan_from_message, stats_from_message
from services.common.objectstore import S3Config
from services.common.options import DEFAULT_BATCH_SIZE, ScoreOptions
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.web import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    read_message,
    service_app,
)
from services.common.wire import MessageError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGGREGATOR_")

    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    output_root: Path = Path("results")  # local output locations must lie under it


def aggregate(message: pb.AggregateRequest) -> SlideResult:
    """The slide result from the plan and every tile's detections: `build_result`, as in process."""
    plan, tissue = plan_from_message(message.plan)
    if not (message.HasField("model") and message.HasField("source_lab") and message.HasField("target_lab")):
        raise MessageError("an AggregateRequest needs the model and the Reinhard source and target statistics")
    if not message.plan.qc_json:
        raise MessageError("the plan carries no quality-control report (qc_json): plan it with the tiler")
    per_tile = {}
    for detections in message.detections:
        per_tile.update(detections_from_message(detections))
    unknown = set(per_tile) - {t.index for t in plan.tiles}
    if unknown:
        raise MessageError(f"detections for tiles {sorted(unknown)[:5]} that are not in the plan")
    class_names = tuple(message.class_names) or ("mitosis",)
    options = ScoreOptions(
        mpp_override_um_per_px=message.mpp_override_um_per_px if message.HasField("mpp_override_um_per_px") else None,
        batch_size=message.batch_size or DEFAULT_BATCH_SIZE,
        overlap_px=plan.overlap_px,
        merge_radius_um=message.merge_radius_um or DEFAULT_MERGE_RADIUS_UM,
        field_diameter_mm=message.field_diameter_mm or DEFAULT_FIELD_DIAMETER_MM,
    )
    merged = merge_tile_detections(plan, per_tile, class_names, options.merge_radius_um)
    summary = summarise(
        merged, plan.slide_width_px, plan.slide_height_px, plan.slide_mpp_um_per_px, tissue, options.field_diameter_mm
    )
    facts = SlideFacts(
        name=message.slide_name,
        width_px=plan.slide_width_px,
        height_px=plan.slide_height_px,
        mpp_um_per_px=plan.slide_mpp_um_per_px,
        mpp_source=message.plan.mpp_source or "metadata",
        vendor=message.plan.vendor,
        reader=message.plan.reader,
    )
    m = message.model
    model = ModelProvenance(
        name=m.name,
        version=m.version,
        sha256=m.sha256,
        input_size_px=m.input_size_px,
        mpp_um_per_px=m.mpp_um_per_px,
        class_names=list(class_names),
        backend=m.backend,
    )
    provenance = make_provenance(
        model,
        stats_from_message(message.source_lab),
        stats_from_message(message.target_lab),
        parameters_of(options, m.score_threshold),
        plan,
        sum(1 for found in per_tile.values() if len(found)),
        timing_of(message.elapsed_s, len(plan.tiles)) if message.elapsed_s > 0 else None,
    )
    return build_result(facts, summary, merged, provenance, json.loads(message.plan.qc_json))


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
        summary="The slide result (the public JSON result) from the plan and all detections",
        response_model=SlideResult,
        response_class=JSONResponse,
        tags=["aggregator"],
    )
    async def aggregate_route(request: Request) -> JSONResponse:
        message = await read_message(request, pb.AggregateRequest, settings.max_body_bytes)
        result = await run_in_threadpool(aggregate, message)
        if message.output_location:
            written = await run_in_threadpool(
                publish, result.document(), message.output_location, settings.output_root, message.slide_png
            )
            result = result.model_copy(update={"exports": written})
        return JSONResponse(result.document())  # the model documents the answer in OpenAPI

    @app.post(
        "/v1/aggregate.geojson",
        summary="The same result as QuPath GeoJSON",
        tags=["aggregator"],
        response_class=Response,
    )
    async def aggregate_geojson(request: Request) -> Response:
        message = await read_message(request, pb.AggregateRequest, settings.max_body_bytes)
        document = geojson_document((await run_in_threadpool(aggregate, message)).document())
        return Response(json.dumps(document), media_type="application/geo+json")

    return app
