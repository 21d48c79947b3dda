"""A small Python client of the gateway's public REST API, for scripts and the demo.

client = GatewayClient("http://127.0.0.1:8100")
slide = client.upload(Path("case.svs"))
job = client.start_job(slide["id"], idempotency_key="lis-order-42")
final = client.follow(job["id"], on_progress=lambda job: print(job["tiles_done"], job["tiles_total"]))
client.download_results(job["id"], Path("case.svs.mitoscope"))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

UPLOAD_TIMEOUT_S = 600.0
EXPORTS = {  # file name: the job's route
    "result.json": "result",
    "result.geojson": "result.geojson",
    "result.csv": "result.csv",
    "overview.png": "overview.png",
}


class GatewayError(RuntimeError):
    """The gateway answered with an error; the message carries its code and explanation."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class GatewayClient:
    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = f"{body.get('error')}: {body.get('message')}"
            except (ValueError, AttributeError):
                detail = response.text
            raise GatewayError(
                f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}: {detail}"
            )
        return response

    def upload(self, path: Path) -> dict[str, Any]:
        """Upload a slide (streamed multipart, with its SHA-256 for the gateway to check)."""
        with path.open("rb") as f:
            response = self.http.post(
                "/v1/slides",
                files={"file": (path.name, f, "application/octet-stream")},
                headers={"x-content-sha256": _sha256(path)},
                timeout=UPLOAD_TIMEOUT_S,
            )
        slide: dict[str, Any] = self._check(response).json()
        return slide

    def start_job(
        self,
        slide_id: str,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        body = {"slide_id": slide_id, "model": model, "options": options or {}}
        job: dict[str, Any] = self._check(self.http.post("/v1/jobs", json=body, headers=headers)).json()
        return job

    def follow(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Follow a job's server-sent events until it ends; returns its final state."""
        final: dict[str, Any] = {}
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
            self._check(response)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                final = json.loads(line.removeprefix("data: "))
                if on_progress is not None:
                    on_progress(final)
        return final

    def result(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._check(self.http.get(f"/v1/jobs/{job_id}/result")).json()
        return result

    def download_results(self, job_id: str, folder: Path) -> list[Path]:
        """The job's exports (JSON, QuPath GeoJSON, CSV, overview picture) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, route in EXPORTS.items():
            path = folder / name
            path.write_bytes(self._check(self.http.get(f"/v1/jobs/{job_id}/{route}", timeout=300)).content)
            written.append(path)
        return written
