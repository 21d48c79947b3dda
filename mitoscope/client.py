"""A small Python client of the gateway's public REST API, for scripts and the demo.

    with GatewayClient("http://127.0.0.1:8100") as client:
        result = client.score(Path("case.svs"), Path("case.svs.mitoscope"))

or step by step:

    slide = client.upload(Path("case.svs"))
    job = client.start_job(slide["id"], idempotency_key="lis-order-42")
    final = client.follow(job["id"], on_progress=lambda job: print(job["tiles_done"], job["tiles_total"]))
    client.download_results(job["id"], Path("case.svs.mitoscope"))

Every failure is raised as a `GatewayError`, never as an httpx exception; the httpx exception is
kept as the cause (`raise ... from e`). The tree, with what each is translated from:

    GatewayError                        any call that did not succeed; `str()` says what and what to do
    ├── GatewayUnavailableError         transient: the same call may succeed later
    │   ├── GatewayConnectError         no connection (refused, unreachable)      httpx.ConnectError
    │   ├── GatewayTimeoutError         no answer in time                         httpx.TimeoutException
    │   ├── GatewayConnectionLostError  the connection broke during the answer    httpx.ReadError, WriteError,
    │   │                               (or an event stream ended early)          CloseError, RemoteProtocolError
    │   └── GatewayBusyError            HTTP 429, 502, 503, 504: the gateway or a service behind it is busy or
    │                                   down; `retry_after_s` when the gateway says
    ├── GatewayRefusedError             HTTP 4xx: the request cannot be served as sent; `error_code` and
    │   │                               the message are the gateway's `{"error", "message"}`
    │   ├── GatewayNotFoundError        HTTP 404: no such slide or job
    │   └── GatewayConflictError        HTTP 409: the job has no result (yet), or is in the wrong state
    ├── GatewayServerError              any other HTTP 5xx (500, 507): the gateway failed; its log says why
    ├── GatewayAnswerError              the answer is not what the gateway's API sends (not JSON)
    └── JobFailedError                  the job ended failed or cancelled; `job` is its final state

Other httpx errors (a URL without http://, a proxy error) are raised as `GatewayError` itself.
The statuses counted as transient are the ones the gateway's own callers retry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from services.common.errors import RETRYABLE_HTTP_STATUSES, PermanentError, TransientError
from services.common.files import file_sha256

TIMEOUT_S = 60.0
UPLOAD_TIMEOUT_S = 600.0
DOWNLOAD_TIMEOUT_S = 300.0
SUCCEEDED = "succeeded"
EXPORTS = {  # file name: the job's route
    "result.json": "result",
    "result.geojson": "result.geojson",
    "result.csv": "result.csv",
    "overview.png": "overview.png",
}

ProgressCallback = Callable[[dict[str, Any]], None]


class GatewayError(RuntimeError):
    """A call to the gateway did not succeed; HTTP errors carry the status and the gateway's code."""

    def __init__(self, message: str, status_code: int | None = None, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code


class GatewayUnavailableError(GatewayError, TransientError):
    """Transient: the gateway cannot serve the call now; the same call may succeed later."""


class GatewayConnectError(GatewayUnavailableError):
    """No connection to the gateway: nothing listens at the URL, or the host is unreachable."""


class GatewayTimeoutError(GatewayUnavailableError):
    """The gateway did not connect, answer or take the body within the timeout."""


class GatewayConnectionLostError(GatewayUnavailableError):
    """The connection broke during the answer (or an event stream ended before its job did)."""


class GatewayBusyError(GatewayUnavailableError):
    """HTTP 429, 502, 503 or 504: the gateway, or a service it needs, is busy or down."""

    def __init__(
        self, message: str, status_code: int, error_code: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status_code, error_code)
        self.retry_after_s = retry_after_s


class GatewayRefusedError(GatewayError, PermanentError):
    """HTTP 4xx: the gateway refused the request as sent; sending it again will not help."""


class GatewayNotFoundError(GatewayRefusedError):
    """HTTP 404: no slide or job with that id."""


class GatewayConflictError(GatewayRefusedError):
    """HTTP 409: the job has no result (yet, or because it failed), or cannot do that in its state."""


class GatewayServerError(GatewayError):
    """HTTP 5xx other than 502-504: the gateway failed at this request; its log says why."""


class GatewayAnswerError(GatewayError):
    """The answer is not what the gateway's API sends: is the URL that of a mitoscope gateway?"""


class JobFailedError(GatewayError):
    """The job ended without a result (failed or cancelled); `job` is its final state."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(
            f"job {job.get('id')} {job.get('state')}: {job.get('error')}", error_code=job.get("error_code")
        )
        self.job = job


@contextmanager
def _translated(what: str, base_url: str) -> Iterator[None]:
    """httpx's exceptions raised inside as this module's, with the httpx one as the cause."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise GatewayTimeoutError(f"{what}: the gateway at {base_url} did not answer in time ({e!r})") from e
    except httpx.ConnectError as e:
        raise GatewayConnectError(
            f"{what}: cannot connect to the gateway at {base_url} ({e}); start it (`mitoscope up`) or check the URL"
        ) from e
    except (httpx.NetworkError, httpx.RemoteProtocolError) as e:
        raise GatewayConnectionLostError(f"{what}: the connection to {base_url} broke ({e}); try again") from e
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise GatewayError(f"{what}: {e}") from e


def _status_error(what: str, response: httpx.Response) -> GatewayError:
    """The error for an HTTP error answer whose body has been read."""
    status = response.status_code
    try:
        body = response.json()
        code, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):  # not the gateway's {"error", "message"} (e.g. FastAPI's 422)
        code, message = None, response.text.strip() or response.reason_phrase
    text = f"{what}: HTTP {status}: {code}: {message}" if code else f"{what}: HTTP {status}: {message}"
    if status in RETRYABLE_HTTP_STATUSES:
        return GatewayBusyError(text, status, code, _retry_after_s(response))
    if status == 404:
        return GatewayNotFoundError(text, status, code)
    if status == 409:
        return GatewayConflictError(text, status, code)
    if status < 500:
        return GatewayRefusedError(text, status, code)
    return GatewayServerError(text, status, code)


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: the caller chooses its own back-off


def _document(what: str, content: bytes) -> dict[str, Any]:
    """A JSON object the gateway answered."""
    try:
        body = json.loads(content)
    except ValueError as e:
        raise GatewayAnswerError(f"{what}: the answer is not JSON; is the URL that of a mitoscope gateway?") from e
    if not isinstance(body, dict):
        raise GatewayAnswerError(f"{what}: the answer is not a JSON object; is the URL that of a mitoscope gateway?")
    return body


class GatewayClient:
    def __init__(self, base_url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; an error answer or a transport failure raised as a `GatewayError`."""
        with _translated(f"{method} {path}", self.base_url):
            response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _status_error(f"{method} {path}", response)
        return response

    def upload(self, path: Path) -> dict[str, Any]:
        """Upload a slide (streamed multipart, with its SHA-256 for the gateway to check)."""
        with path.open("rb") as f:
            response = self._send(
                "POST",
                "/v1/slides",
                files={"file": (path.name, f, "application/octet-stream")},
                headers={"x-content-sha256": file_sha256(path)},
                timeout=UPLOAD_TIMEOUT_S,
            )
        return _document("POST /v1/slides", response.content)

    def start_job(
        self,
        slide_id: str,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        body = {"slide_id": slide_id, "model": model, "options": options or {}}
        response = self._send("POST", "/v1/jobs", json=body, headers=headers)
        return _document("POST /v1/jobs", response.content)

    def follow(self, job_id: str, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Follow a job's server-sent events until it ends; returns its final state.

        The stream has no read timeout: a job may go minutes between events (a slow first batch)."""
        path = f"/v1/jobs/{job_id}/events"
        what = f"GET {path}"
        timeout = httpx.Timeout(None, connect=self.timeout_s)
        with _translated(what, self.base_url), self.http.stream("GET", path, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()  # a streamed answer's body is read only on demand
                raise _status_error(what, response)
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    state = _document(what, line.removeprefix("data: ").encode())
                    if on_progress is not None:
                        on_progress(state)
                    if event == "end":
                        return state
        raise GatewayConnectionLostError(f"{what}: the event stream ended before job {job_id} did; follow it again")

    def result(self, job_id: str) -> dict[str, Any]:
        path = f"/v1/jobs/{job_id}/result"
        return _document(f"GET {path}", self._send("GET", path).content)

    def download_results(self, job_id: str, folder: Path) -> list[Path]:
        """The job's exports (JSON, QuPath GeoJSON, CSV, overview picture) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, route in EXPORTS.items():
            path = folder / name
            path.write_bytes(self._send("GET", f"/v1/jobs/{job_id}/{route}", timeout=DOWNLOAD_TIMEOUT_S).content)
            written.append(path)
        return written

    def score(
        self,
        slide: Path,
        out_dir: Path,
        options: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Upload a slide, score it, follow the job to its end and download its exports into `out_dir`.

        Returns the result document (result.json); a job that ends without one raises `JobFailedError`."""
        uploaded = self.upload(slide)
        job = self.start_job(uploaded["id"], options=options)
        final = self.follow(job["id"], on_progress)
        if final.get("state") != SUCCEEDED:
            raise JobFailedError(final)
        self.download_results(job["id"], out_dir)
        return _document(f"GET /v1/jobs/{job['id']}/result", (out_dir / "result.json").read_bytes())
