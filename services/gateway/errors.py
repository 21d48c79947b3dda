"""The gateway's errors, and the one table (`ERRORS`) that maps them to an HTTP status and code.

GatewayError
 ├── BadRequestError               400 bad_request             the request cannot be served as sent
 ├── BadLocationError              422 bad_location            a malformed s3:// URI (a ValueError too)
 ├── UnsupportedMediaTypeError     415 unsupported_media_type  neither multipart/form-data nor JSON
 ├── UnknownSlideError             404 unknown_slide           no slide with that id
 ├── ResultNotReadyError           409 result_not_ready        the job has no result: not yet, or it failed
 ├── SlideRefusedError             422 <the refusal's code>    quality control refused the job's slide
 └── DependencyError                                           a service behind the gateway failed the request
      ├── DependencyNotFoundError     404 <the service's code>    it has no such thing (the slide is gone)
      ├── DependencyRefusedError      422 <the service's code>    it refuses the slide (bad_slide, not_he, ...)
      ├── BadGatewayError             502 bad_gateway             it failed, or the gateway asked it wrongly
      └── DependencyUnavailableError  503 dependency_unavailable  it is down or busy: try again later

The table also maps the errors of what the gateway uses: uploads (400, 413, 507), the job store
(404 unknown_job, 409 job_state) and the object store (422, 503). `DATABASE_ERRORS`, a job
database that does not answer, are 503 database_unavailable. Bodies are
`{"error": <code>, "message": <what was wrong, what to do>}`; an error with an `error_code`
attribute answers that code instead (a refusal says which check refused the slide).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sql

from services.common import objectstore
from services.common.web import error_response
from services.gateway.jobs import JobStateError, UnknownJobError
from services.gateway.uploads import UploadError, UploadStorageError, UploadTooLargeError


class GatewayError(Exception):
    """Base class of the gateway's own errors."""


class BadRequestError(GatewayError):
    """The request cannot be served as sent."""


class BadLocationError(GatewayError, ValueError):
    """A location is not a well-formed `s3://bucket/key` (a ValueError, so models may raise it)."""


class UnsupportedMediaTypeError(GatewayError):
    """The body is of a media type the endpoint does not take."""


class UnknownSlideError(GatewayError):
    """No slide with that id."""


class UnknownModelError(GatewayError):
    """The detector serves no model of that name."""


class ResultNotReadyError(GatewayError):
    """The job has no result: it has not finished, or it failed."""


class SlideRefusedError(GatewayError):
    """The slide cannot be scored (quality control refused it); `error_code` says which check."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class DependencyError(GatewayError):
    """A service behind the gateway failed this request; `error_code` is its code, when it gave one."""

    def __init__(self, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class DependencyNotFoundError(DependencyError):
    """The service has no such thing: the job's slide is no longer where it was scored."""


class DependencyRefusedError(DependencyError):
    """The service refuses the slide (it cannot be read, or quality control refuses it now)."""


class BadGatewayError(DependencyError):
    """The service failed, or refused what the gateway asked: not the caller's to fix."""


class DependencyUnavailableError(DependencyError):
    """The service is down or busy; try again later."""


ERRORS: dict[type[Exception], tuple[int, str]] = {
    BadRequestError: (400, "bad_request"),
    UploadError: (400, "bad_upload"),
    UnknownSlideError: (404, "unknown_slide"),
    UnknownJobError: (404, "unknown_job"),
    DependencyNotFoundError: (404, "not_found"),
    ResultNotReadyError: (409, "result_not_ready"),
    JobStateError: (409, "job_state"),
    UploadTooLargeError: (413, "upload_too_large"),
    UnsupportedMediaTypeError: (415, "unsupported_media_type"),
    BadLocationError: (422, "bad_location"),
    SlideRefusedError: (422, "slide_refused"),
    UnknownModelError: (422, "unknown_model"),
    DependencyRefusedError: (422, "refused"),
    objectstore.ObjectStoreRefusedError: (422, "storage_refused"),
    objectstore.NoSuchObjectError: (422, "storage_location"),
    BadGatewayError: (502, "bad_gateway"),
    DependencyUnavailableError: (503, "dependency_unavailable"),
    objectstore.ObjectStoreUnavailableError: (503, "storage_unavailable"),
    UploadStorageError: (507, "insufficient_storage"),
}

# The job database does not answer (connection refused, file gone, pool exhausted): 503. Their
# own text carries the SQL statement, so the answer names only the driver's reason.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sql.OperationalError, sql.TimeoutError)


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    reason = getattr(exc, "orig", None) or exc
    return error_response(503, "database_unavailable", f"the job database does not answer ({reason}); try again later")
