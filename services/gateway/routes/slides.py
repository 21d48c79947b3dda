"""`/v1/slides`: upload a slide or register one by location; list them; look one up."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import ValidationError

from services.gateway.deps import SettingsDep, SlideStoreDep
from services.gateway.errors import BadRequestError, UnsupportedMediaTypeError
from services.gateway.schemas import RegisterSlide, SlideOut
from services.gateway.slides import receive_upload, register
from services.gateway.uploads import UploadTooLargeError

MAX_REGISTRATION_BYTES = 64 * 1024

router = APIRouter(tags=["slides"])

# Both bodies the route takes, for the OpenAPI schema (the route reads the body itself).
TWO_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/json": {"schema": RegisterSlide.model_json_schema()},
        },
    }
}


@router.post(
    "/v1/slides",
    status_code=201,
    summary="Upload a slide (multipart/form-data, field `file`) or register one by location (JSON)",
    openapi_extra=TWO_BODIES,
)
async def add_slide(request: Request, slides: SlideStoreDep, settings: SettingsDep) -> SlideOut:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = await _registration(request)
        return SlideOut.of(await asyncio.to_thread(register, slides, settings.slide_root, body.location, body.name))
    if content_type.startswith("multipart/form-data"):
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > settings.max_upload_bytes:
            raise UploadTooLargeError(f"{declared} bytes exceed the upload limit of {settings.max_upload_bytes}")
        expected_sha256 = request.headers.get("x-content-sha256")
        return SlideOut.of(await receive_upload(slides, settings, content_type, request.stream(), expected_sha256))
    raise UnsupportedMediaTypeError(
        f"send the slide as multipart/form-data (curl -F file=@slide.svs) or register it with "
        f'application/json {{"location": ...}}, not {content_type or "no content type"}'
    )


async def _registration(request: Request) -> RegisterSlide:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_REGISTRATION_BYTES:
            raise UploadTooLargeError(f"a registration is a small JSON object, not {len(raw)}+ bytes")
    try:
        return RegisterSlide.model_validate_json(raw)
    except ValidationError as e:
        raise BadRequestError(f"registration: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e


@router.get("/v1/slides", summary="Slides, newest first")
def list_slides(slides: SlideStoreDep) -> list[SlideOut]:
    return [SlideOut.of(slide) for slide in slides.list()]


@router.get("/v1/slides/{slide_id}", summary="One slide")
def get_slide(slide_id: str, slides: SlideStoreDep) -> SlideOut:
    return SlideOut.of(slides.get(slide_id))
