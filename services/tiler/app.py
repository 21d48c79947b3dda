"""tiler service: slide metadata, the tissue tile plan, tile batches and DeepZoom tiles over HTTP.

    uvicorn services.tiler.app:create_app --factory --host 127.0.0.1 --port 8101

Slides are named by location: a path under the configured slide root, or `s3://bucket/key`
(fetched into the bounded slide cache). Open slides and their plans are kept in a small LRU so
successive batch requests for one slide do not reopen or re-plan it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import objectstore
from services.common.messages import batch_to_message, plan_to_message
from services.common.objectstore import S3Config
from services.common.web import DEFAULT_MAX_CONCURRENT_REQUESTS, message_response, service_app
from services.tiler.errors import (
    QC_REFUSALS,
    NoSuchTileError,
    SlideError,
    SlideNotFoundError,
    StorageRefusedError,
    StorageUnavailableError,
    TileOutOfRangeError,
)
from services.tiler.grid import DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX
from services.tiler.planning import OVERVIEW_MAX_SIDE_PX, SlidePlan, plan_slide
from services.tiler.reader import ReadGeometry, read_tile
from services.tiler.slide import Slide, open_slide, resolve_mpp
from services.tiler.storage import SlideCache, is_s3_uri, resolve_slide

DEEPZOOM_TILE_PX = 254
DEEPZOOM_OVERLAP_PX = 1
MAX_TILES_PER_BATCH = 300


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TILER_")

    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    slide_root: Path = Path("slides")  # local locations must lie under it
    cache_dir: Path = Path(".cache/mitoscope/slides")
    cache_max_bytes: int = 20 * 1024**3
    open_slides: int = 8


MAX_LOCATION_CHARS = 1024
MAX_MPP_UM_PER_PX = 10.0  # coarser than any scanner's level 0
MIN_TILE_PX, MAX_TILE_PX = 64, 4096


def _no_nul(location: str) -> str:
    if "\x00" in location:
        raise ValueError("a slide location must not contain a NUL character")
    return location


# Every route takes a slide location the same way: refused as a bad request (422) before any file
# or object is looked up.
SlideLocation = Annotated[
    str,
    Field(min_length=1, max_length=MAX_LOCATION_CHARS, description="path under the slide root, or s3://bucket/key"),
    AfterValidator(_no_nul),
]


class PlanRequest(BaseModel):
    location: SlideLocation
    mpp_um_per_px: float | None = Field(
        default=None, gt=0, le=MAX_MPP_UM_PER_PX, description="only for slides without MPP metadata"
    )
    model_mpp_um_per_px: float = Field(default=0.25, gt=0, le=MAX_MPP_UM_PER_PX)
    tile_px: int = Field(default=DEFAULT_TILE_PX, ge=MIN_TILE_PX, le=MAX_TILE_PX)
    overlap_px: int = Field(default=DEFAULT_OVERLAP_PX, ge=0)

    @model_validator(mode="after")
    def _overlap_inside_the_tile(self) -> PlanRequest:
        if self.overlap_px >= self.tile_px:
            raise ValueError(f"overlap_px ({self.overlap_px}) must be smaller than tile_px ({self.tile_px})")
        return self


class BatchRequest(PlanRequest):
    start: int = Field(default=0, ge=0)
    count: int = Field(default=0, ge=0, le=MAX_TILES_PER_BATCH)
    indices: list[int] = Field(
        default=[], max_length=MAX_TILES_PER_BATCH, description="explicit tile indices instead of start/count"
    )


@dataclass
class OpenedSlide:
    slide: Slide
    lock: threading.Lock
    plans: dict[tuple[float, float, int, int], tuple[float, SlidePlan]]


class SlideRegistry:
    """Open slides by location (LRU-bounded) with their plans."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = SlideCache(settings.cache_dir, settings.cache_max_bytes)
        self._open: OrderedDict[str, OpenedSlide] = OrderedDict()
        self._lock = threading.Lock()

    def _local_path(self, location: str) -> Path:
        if is_s3_uri(location):
            return resolve_slide(location, self.cache)
        root = self.settings.slide_root.resolve()
        path = (root / location).resolve()
        if not path.is_relative_to(root):
            raise SlideNotFoundError(f"{location}: outside the slide root")
        return resolve_slide(str(path))

    def get(self, location: str) -> OpenedSlide:
        with self._lock:
            if location in self._open:
                self._open.move_to_end(location)
                return self._open[location]
        opened = OpenedSlide(open_slide(self._local_path(location)), threading.Lock(), {})
        with self._lock:
            self._open[location] = opened
            while len(self._open) > self.settings.open_slides:
                _, evicted = self._open.popitem(last=False)
                with evicted.lock:
                    evicted.slide.close()
            return opened

    def plan(self, request: PlanRequest) -> tuple[OpenedSlide, float, SlidePlan]:
        opened = self.get(request.location)
        key = (request.mpp_um_per_px or 0.0, request.model_mpp_um_per_px, request.tile_px, request.overlap_px)
        with opened.lock:
            if key not in opened.plans:
                mpp = resolve_mpp(opened.slide.info, request.mpp_um_per_px)
                opened.plans[key] = (
                    mpp,
                    plan_slide(opened.slide, mpp, request.model_mpp_um_per_px, request.tile_px, request.overlap_px),
                )
            mpp, planned = opened.plans[key]
        return opened, mpp, planned

    def close(self) -> None:
        with self._lock:
            for opened in self._open.values():
                opened.slide.close()
            self._open.clear()


def get_registry(request: Request) -> SlideRegistry:
    registry: SlideRegistry = request.app.state.registry
    return registry


RegistryDep = Annotated[SlideRegistry, Depends(get_registry)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    registry = SlideRegistry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        registry.close()

    def problems() -> list[str]:
        root = settings.slide_root
        found = [] if root.is_dir() else [f"slide root {root} does not exist"]
        if S3Config.configured():  # s3:// slides are served only while the object store answers
            found += objectstore.problems(S3Config.from_env())
        return found

    app = service_app(
        "tiler",
        "Slides (OpenSlide, tiffslide) to tissue tile plans and tile batches "
        "(`application/x-protobuf` TileBatch), plus DeepZoom tiles for viewers.",
        ready=problems,
        errors={
            SlideNotFoundError: (404, "slide_not_found"),
            TileOutOfRangeError: (422, "tile_out_of_range"),
            NoSuchTileError: (404, "no_such_tile"),
            SlideError: (422, "bad_slide"),
            # Quality-control refusals answer their own code: not_brightfield, not_he, ...
            **{error: (422, error.code) for error in QC_REFUSALS},
            StorageRefusedError: (422, "storage_refused"),
            StorageUnavailableError: (503, "storage_unavailable"),
        },
        lifespan=lifespan,
        max_concurrent_requests=settings.max_concurrent_requests,
    )
    app.state.registry = registry

    @app.post(
        "/v1/plan",
        summary="Tissue mask and tile grid of a slide, as a Plan message",
        response_class=Response,
        tags=["tiler"],
    )
    async def plan(request: PlanRequest, registry: RegistryDep) -> Response:
        opened, _, planned = await run_in_threadpool(registry.plan, request)
        info = opened.slide.info
        mpp_source = "override" if request.mpp_um_per_px is not None else "metadata"
        return message_response(
            plan_to_message(planned.plan, planned.tissue, planned.qc.to_dict(), info.vendor, info.backend, mpp_source)
        )

    @app.post(
        "/v1/batch",
        summary="Tiles [start, start + count) of the plan, as a TileBatch",
        response_class=Response,
        tags=["tiler"],
    )
    async def batch(request: BatchRequest, registry: RegistryDep) -> Response:
        opened, _, planned = await run_in_threadpool(registry.plan, request)
        all_tiles = planned.plan.tiles
        if request.indices:
            if not all(0 <= i < len(all_tiles) for i in request.indices):
                raise TileOutOfRangeError(f"{request.location}: tile indices outside 0..{len(all_tiles) - 1}")
            tiles = tuple(all_tiles[i] for i in request.indices)
        else:
            tiles = all_tiles[request.start : request.start + request.count]

        def read() -> np.ndarray:
            geometry = ReadGeometry.for_plan(opened.slide, planned.plan)
            with opened.lock:
                return np.stack([read_tile(opened.slide, planned.plan, geometry, t) for t in tiles])

        if not tiles:
            pixels = np.zeros((0, request.tile_px, request.tile_px, 3), np.uint8)
        else:
            pixels = await run_in_threadpool(read)
        return message_response(batch_to_message(request.location, tiles, pixels))

    @app.get(
        "/v1/overview.png",
        summary="The whole slide, longer side up to 2048 px",
        response_class=Response,
        tags=["viewer"],
    )
    async def overview(registry: RegistryDep, location: Annotated[SlideLocation, Query()]) -> Response:
        opened = await run_in_threadpool(registry.get, location)

        def render() -> bytes:
            with opened.lock:
                picture = opened.slide.thumbnail(OVERVIEW_MAX_SIDE_PX)
            ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            assert ok
            return bytes(png.tobytes())

        return Response(await run_in_threadpool(render), media_type="image/png")

    @app.get(
        "/v1/deepzoom/{level}/{col}_{row}.jpeg",
        summary="A DeepZoom tile for slide viewers",
        response_class=Response,
        tags=["viewer"],
    )
    async def deepzoom(
        level: int,
        col: int,
        row: int,
        registry: RegistryDep,
        location: Annotated[SlideLocation, Query()],
    ) -> Response:
        opened = await run_in_threadpool(registry.get, location)

        def render() -> bytes:
            with opened.lock:
                try:
                    tile = opened.slide.deepzoom_tile(level, col, row, DEEPZOOM_TILE_PX, DEEPZOOM_OVERLAP_PX)
                except IndexError as e:
                    raise NoSuchTileError(f"{location}: {e}") from e
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok
            return bytes(jpeg.tobytes())

        return Response(await run_in_threadpool(render), media_type="image/jpeg")

    return app
