"""preprocess service: slide-level Reinhard statistics and batch normalisation over HTTP.

uvicorn services.preprocess.app:create_app --factory --host 127.0.0.1 --port 8102
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.messages import batch_from_message, batch_to_message, stats_from_message, stats_to_message
from services.common.proto.mitoscope.v1 import pipeline_pb2 as pb
from services.common.web import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    message_response,
    read_message,
    service_app,
)
from services.preprocess.errors import NormalisationError
from services.preprocess.reinhard import ReinhardNormaliser, stats_from_images


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREPROCESS_")

    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = service_app(
        "preprocess",
        "Reinhard colour normalisation with slide-level source statistics. Bodies are "
        "`application/x-protobuf` messages from `proto/mitoscope/v1/pipeline.proto`.",
        ready=lambda: [],
        errors={NormalisationError: (422, "cannot_normalise")},
        max_concurrent_requests=settings.max_concurrent_requests,
    )
    app.state.settings = settings

    @app.post(
        "/v1/stats",
        summary="Lab statistics over the tissue of a batch (a slide's sample tiles)",
        response_class=Response,
        tags=["preprocess"],
    )
    async def stats(request: Request, settings: SettingsDep) -> Response:
        batch = await read_message(request, pb.TileBatch, settings.max_body_bytes)
        _, pixels = batch_from_message(batch)
        stats = await run_in_threadpool(stats_from_images, list(pixels))
        return message_response(stats_to_message(stats))

    @app.post(
        "/v1/normalise",
        summary="Normalise a batch from its slide's statistics onto a target",
        response_class=Response,
        tags=["preprocess"],
    )
    async def normalise(request: Request, settings: SettingsDep) -> Response:
        message = await read_message(request, pb.NormaliseRequest, settings.max_body_bytes)
        tiles, pixels = batch_from_message(message.batch)
        normaliser = ReinhardNormaliser(stats_from_message(message.source), stats_from_message(message.target))
        normalised = await run_in_threadpool(normaliser, pixels)
        return message_response(batch_to_message(message.batch.slide_id, tiles, normalised))

    return app
