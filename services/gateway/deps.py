"""What routes are handed: the shared resources made in the lifespan, as typed dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from services.gateway.database import make_engine
from services.gateway.detector_client import DetectorClient
from services.gateway.jobs import JobStore
from services.gateway.settings import Settings
from services.gateway.slides import SlideStore
from services.gateway.tiler_client import TilerClient


@dataclass(frozen=True)
class Resources:
    """The gateway's shared resources: opened when it starts, closed when it stops."""

    engine: Engine
    jobs: JobStore
    slides: SlideStore
    tiler: TilerClient
    detector: DetectorClient

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        engine = make_engine(settings.database_url)
        return cls(
            engine,
            JobStore(engine),
            SlideStore(engine),
            TilerClient(settings.tiler_url),
            DetectorClient(settings.detector_url),
        )

    def close(self) -> None:
        self.tiler.close()
        self.detector.close()
        self.engine.dispose()


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def get_jobs(request: Request) -> JobStore:
    return get_resources(request).jobs


def get_slides(request: Request) -> SlideStore:
    return get_resources(request).slides


def get_tiler(request: Request) -> TilerClient:
    return get_resources(request).tiler


def get_detector(request: Request) -> DetectorClient:
    return get_resources(request).detector


SettingsDep = Annotated[Settings, Depends(get_settings)]
DetectorDep = Annotated[DetectorClient, Depends(get_detector)]
JobStoreDep = Annotated[JobStore, Depends(get_jobs)]
SlideStoreDep = Annotated[SlideStore, Depends(get_slides)]
TilerDep = Annotated[TilerClient, Depends(get_tiler)]
