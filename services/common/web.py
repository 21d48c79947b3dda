"""The thin web layer every service shares: protobuf bodies, JSON errors, health and metrics.

Errors are JSON `{"error": <machine-readable code>, "message": <what to do>}`; each service maps
its own exception hierarchy to status codes once, with `service_app(errors=...)` (`add_error_handler`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.message import DecodeError, Message
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from services.common.wire import PROTOBUF_CONTENT_TYPE, MessageError

M = TypeVar("M", bound=Message)
DEFAULT_MAX_BODY_BYTES = 512 * 1024 * 1024  # a 150-tile batch of 512 px tiles is 118 MB
DEFAULT_MAX_CONCURRENT_REQUESTS = 4  # work requests (`/v1/...`) served at once; more get 429
BUSY_RETRY_AFTER_S = 1


class ContentTypeError(ValueError):
    """The request body is not of the media type the endpoint takes (HTTP 415)."""


class BodyTooLargeError(ValueError):
    """The request body exceeds the service's limit (HTTP 413)."""


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "message": message})


async def read_message(request: Request, message_type: type[M], max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> M:
    """Parse a protobuf request body, checking its content type and size first."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != PROTOBUF_CONTENT_TYPE:
        raise ContentTypeError(
            f"send {message_type.DESCRIPTOR.full_name} as {PROTOBUF_CONTENT_TYPE}, "
            f"not {content_type or 'no content type'}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > max_bytes:
        raise BodyTooLargeError(f"body of {declared} bytes exceeds the limit of {max_bytes}; send smaller batches")
    body = await request.body()
    if len(body) > max_bytes:
        raise BodyTooLargeError(f"body of {len(body)} bytes exceeds the limit of {max_bytes}; send smaller batches")
    try:
        return message_type.FromString(body)
    except DecodeError as e:
        raise MessageError(f"the body is not a valid {message_type.DESCRIPTOR.full_name}: {e}") from e


def message_response(message: Message) -> Response:
    return Response(content=message.SerializeToString(), media_type=PROTOBUF_CONTENT_TYPE)


def add_common_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(ContentTypeError, _handler(415, "unsupported_media_type"))
    app.add_exception_handler(BodyTooLargeError, _handler(413, "body_too_large"))
    app.add_exception_handler(MessageError, _handler(400, "malformed_message"))


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors in the documented shape: the code, one readable line per problem,
    and the problems themselves under `fields` for machines."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors)
    body = {"error": "invalid_request", "message": problems or str(exc), "fields": jsonable_encoder(errors)}
    return JSONResponse(body, status_code=422)


def _handler(status: int, code: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        # An error may name its own, finer code (a slide refused by QC says which check refused it).
        return error_response(status, getattr(exc, "error_code", None) or code, str(exc))

    return handle


def add_error_handler(app: FastAPI, error: type[Exception], status: int, code: str) -> None:
    app.add_exception_handler(error, _handler(status, code))


def service_app(
    name: str,
    description: str,
    ready: Callable[[], list[str]],
    errors: dict[type[Exception], tuple[int, str]],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    max_concurrent_requests: int | None = None,
) -> FastAPI:
    """A service's FastAPI app with health, metrics, request metrics and its error mapping.

    With `max_concurrent_requests`, work requests beyond that many at once are refused with 429
    and `Retry-After` instead of queueing: callers back off, and memory stays bounded."""
    app = FastAPI(title=f"mitoscope {name}", version="1", description=description, lifespan=lifespan)
    router, middleware = observability_router(name, ready)
    app.include_router(router)
    if max_concurrent_requests is not None:
        app.middleware("http")(concurrency_limit(name, max_concurrent_requests))
    app.middleware("http")(middleware)
    add_common_error_handlers(app)
    for error, (status, code) in errors.items():
        add_error_handler(app, error, status, code)
    return app


def concurrency_limit(service: str, limit: int) -> Callable[..., Awaitable[Response]]:
    """A middleware that serves at most `limit` `/v1/` requests at once and answers the rest 429."""
    in_flight = 0

    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        nonlocal in_flight  # one event loop per app: no lock needed between awaits
        if not request.url.path.startswith("/v1/"):
            return await call_next(request)
        if in_flight >= limit:
            busy = error_response(
                429, "busy", f"{service} is serving {limit} requests already; retry after {BUSY_RETRY_AFTER_S} s"
            )
            busy.headers["retry-after"] = str(BUSY_RETRY_AFTER_S)
            return busy
        in_flight += 1
        try:
            return await call_next(request)
        finally:
            in_flight -= 1

    return middleware


def observability_router(
    service: str, ready: Callable[[], list[str]]
) -> tuple[APIRouter, Callable[..., Awaitable[Response]]]:
    """Health and metrics routes plus a middleware counting requests and their latency.

    `ready` returns the problems that keep the service from serving (empty when ready)."""
    registry = CollectorRegistry()
    requests = Counter("mitoscope_http_requests", "HTTP requests", ["service", "route", "status"], registry=registry)
    latency = Histogram(
        "mitoscope_http_request_seconds", "HTTP request latency", ["service", "route"], registry=registry
    )
    router = APIRouter(tags=["operations"])

    @router.get("/health/live", summary="The process is up")
    def live() -> dict[str, str]:
        return {"status": "live"}

    @router.get("/health/ready", summary="The service and its dependencies can serve", response_model=None)
    def is_ready() -> dict[str, str] | JSONResponse:
        problems = ready()
        if problems:
            return error_response(503, "not_ready", "; ".join(problems))
        return {"status": "ready"}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(service, route, str(response.status_code)).inc()
        latency.labels(service, route).observe(time.perf_counter() - started)
        return response

    return router, middleware
