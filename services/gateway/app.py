"""gateway: the public, versioned REST API (JSON) that hospital systems call.

    GATEWAY_TILER_URL=... uvicorn services.gateway.app:create_app --factory --host 127.0.0.1 --port 8100

Slides are uploaded or registered by location (`slides.py`); jobs are durable rows in the job
store (`jobs.py`), run by `GATEWAY_WORKER_THREADS` workers here or by separate worker processes
(`worker.py`), which score them through the services (`orchestrate.py`). Routes are grouped by
resource under `routes/`; the job database, the stores and the tiler client are made in the
lifespan and handed to routes by `deps.py`; every error maps to its status once, in `errors.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from services.common import objectstore
from services.common.objectstore import S3Config
from services.common.web import service_app
from services.gateway.background import BackgroundWork
from services.gateway.deps import Resources
from services.gateway.errors import DATABASE_ERRORS, ERRORS, database_unavailable
from services.gateway.routes import events, jobs, results, slides
from services.gateway.settings import Settings

__all__ = ["Settings", "create_app"]

DESCRIPTION = (
    "The public mitoscope API: register or upload slides, start scoring jobs, follow their progress, "
    "fetch results as JSON, QuPath GeoJSON or CSV."
)


def problems(settings: Settings, resources: Resources) -> list[str]:
    """What keeps the gateway from serving now (empty when it can), for readiness."""
    found = [] if settings.slide_root.is_dir() else [f"slide root {settings.slide_root} is missing"]
    try:
        with resources.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as e:
        found.append(f"the job database does not answer: {e}")
    if S3Config.configured():
        found += objectstore.problems(S3Config.from_env())
    return found


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = Resources.open(settings)
        app.state.resources = resources
        background = BackgroundWork(settings, resources.slides, resources.jobs)
        background.start()
        try:
            yield
        finally:
            background.stop()
            resources.close()

    app = service_app(
        "gateway",
        DESCRIPTION,
        ready=lambda: problems(settings, app.state.resources),
        errors=ERRORS,
        lifespan=lifespan,
    )
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, database_unavailable)
    app.state.settings = settings
    for routes in (slides, jobs, events, results):
        app.include_router(routes.router)
    return app
