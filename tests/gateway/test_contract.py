"""The gateway's HTTP contract, route by route, against stub services on loopback.

For every route: an unknown id is 404 with `{"error", "message"}`, a malformed body 422 (400 where
the route has always parsed its own body), a dependency that is down 503, and the success shape.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import Settings, create_app
from services.gateway.database import make_engine
from services.gateway.jobs import JobStore
from services.gateway.orchestrate import ServiceUrls
from services.gateway.worker import RetryPolicy, WorkerConfig, run_worker
from services.watcher import FolderSource
from tests.gateway.stubs import STUB_MODEL, StubScript, stub_services, unused_url

SLIDE_KEYS = {"id", "name", "location", "sha256", "size_bytes"}
JOB_KEYS = {
    "id",
    "slide_location",
    "model",
    "state",
    "tiles_done",
    "tiles_total",
    "progress",
    "eta_s",
    "attempts",
    "error",
    "error_code",
}
UNKNOWN = "00000000-0000-0000-0000-000000000000"
RESULT_ROUTES = ("result", "result.geojson", "result.csv", "overview.png")
S3_RECORD = {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "scanner"}, "object": {"key": "a.svs"}}}


@dataclass
class Gateway:
    client: TestClient
    settings: Settings
    urls: ServiceUrls
    script: StubScript

    def slide(self, name: str = "case.svs") -> str:
        """Put a slide file under the slide root and register it; its id."""
        (self.settings.slide_root / name).write_bytes(b"a slide")
        registered = self.client.post("/v1/slides", json={"location": name})
        assert registered.status_code == 201, registered.text
        slide_id: str = registered.json()["id"]
        return slide_id

    def job(self, slide: str = "case.svs") -> str:
        created = self.client.post("/v1/jobs", json={"slide_id": self.slide(slide)})
        assert created.status_code == 202, created.text
        job_id: str = created.json()["id"]
        return job_id

    def run_jobs(self) -> None:
        """Work off the queued jobs against the stubs, as a worker process would."""
        engine = make_engine(self.settings.database_url)
        config = WorkerConfig(retry=RetryPolicy(budget_s=0))
        run_worker(JobStore(engine), "contract-worker", self.urls, config, stop_when_idle=True)
        engine.dispose()


def _settings(tmp_path: Path, urls: ServiceUrls, **changes: Any) -> Settings:
    (tmp_path / "slides").mkdir(exist_ok=True)
    (tmp_path / "db").mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'db' / 'gateway.db'}",
        "slide_root": tmp_path / "slides",
        "worker_threads": 0,
        "default_model": STUB_MODEL,
        "tiler_url": urls.tiler,
        "preprocess_url": urls.preprocess,
        "detector_url": urls.detector,
        "aggregator_url": urls.aggregator,
    }
    return Settings(**(values | changes))


@pytest.fixture
def no_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(("MITOSCOPE_S3_", "GATEWAY_")):
            monkeypatch.delenv(name)


@pytest.fixture
def gateway(tmp_path: Path, no_object_store: None) -> Iterator[Gateway]:
    script = StubScript()
    with stub_services(script) as urls:
        settings = _settings(tmp_path, urls)
        with TestClient(create_app(settings)) as client:
            yield Gateway(client, settings, urls, script)


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == code and body["message"], body
    message: str = body["message"]
    return message


# --- slides ---------------------------------------------------------------------------------------


def test_slides_contract(gateway: Gateway) -> None:
    client = gateway.client
    slide_id = gateway.slide()
    one = client.get(f"/v1/slides/{slide_id}")
    assert one.status_code == 200 and set(one.json()) == SLIDE_KEYS
    assert one.json()["location"] == "case.svs" and one.json()["size_bytes"] == len(b"a slide")
    listed = client.get("/v1/slides")
    assert listed.status_code == 200 and [s["id"] for s in listed.json()] == [slide_id]

    body = b"an uploaded slide"
    uploaded = client.post(
        "/v1/slides",
        files={"file": ("up.ndpi", body)},
        headers={"x-content-sha256": hashlib.sha256(body).hexdigest()},
    )
    assert uploaded.status_code == 201 and set(uploaded.json()) == SLIDE_KEYS
    assert uploaded.json()["sha256"] == hashlib.sha256(body).hexdigest()

    assert "POST /v1/slides" in _error(client.get(f"/v1/slides/{UNKNOWN}"), 404, "unknown_slide")
    _error(client.post("/v1/slides", json={"name": "no location"}), 400, "bad_request")
    _error(client.post("/v1/slides", json={"location": "missing.svs"}), 400, "bad_request")
    tiff = client.post("/v1/slides", content=b"x", headers={"content-type": "image/tiff"})
    _error(tiff, 415, "unsupported_media_type")


@pytest.mark.parametrize("location", ["s3://", "s3:///case.svs", "s3://scanner", "s3://scanner/"])
def test_a_malformed_s3_uri_is_422_whether_or_not_a_store_is_configured(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    message = _error(gateway.client.post("/v1/slides", json={"location": location}), 422, "bad_location")
    assert location in message and "s3://bucket/key" in message
    monkeypatch.setenv("MITOSCOPE_S3_ENDPOINT", unused_url().removeprefix("http://"))
    _error(gateway.client.post("/v1/slides", json={"location": location}), 422, "bad_location")


def test_registering_from_an_object_store_that_is_down_is_503(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MITOSCOPE_S3_ENDPOINT", unused_url().removeprefix("http://"))
    monkeypatch.setenv("MITOSCOPE_S3_RETRIES", "0")
    response = gateway.client.post("/v1/slides", json={"location": "s3://scanner/case.svs"})
    _error(response, 503, "storage_unavailable")


def test_uploads_take_the_slide_files_the_watcher_watches(gateway: Gateway, tmp_path: Path) -> None:
    names = [f"case{suffix}" for suffix in (".svs", ".SVS", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".dcm")]
    names += [f"case{suffix}" for suffix in (".vms", ".vmu", ".bif", ".zip", ".svslide", ".txt", ".json")]
    accepted = {
        name for name in names if gateway.client.post("/v1/slides", files={"file": (name, b"x")}).status_code == 201
    }
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in names:
        (inbox / name).write_bytes(b"x")
    source = FolderSource(inbox, settle_s=0.0)
    source.slides()  # the first look notes the sizes
    watched = {slide.name for slide in source.slides()}
    assert accepted == watched and "case.svs" in accepted and "case.txt" not in accepted


# --- jobs -----------------------------------------------------------------------------------------


def test_jobs_contract(gateway: Gateway) -> None:
    client = gateway.client
    slide_id = gateway.slide()
    created = client.post("/v1/jobs", json={"slide_id": slide_id}, headers={"idempotency-key": "order-1"})
    assert created.status_code == 202 and set(created.json()) == JOB_KEYS
    job = created.json()
    assert job["state"] == "queued" and job["model"] == STUB_MODEL and job["error_code"] is None
    again = client.post("/v1/jobs", json={"slide_id": slide_id}, headers={"idempotency-key": "order-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]

    assert client.get(f"/v1/jobs/{job['id']}").json() == job
    assert [j["id"] for j in client.get("/v1/jobs", params={"state": "queued"}).json()] == [job["id"]]
    _error(client.post(f"/v1/jobs/{job['id']}/retry"), 409, "job_state")
    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
        assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
        text = "".join(events.iter_text())
    assert text.startswith("event: progress\n") and "event: end\n" in text and '"state":"cancelled"' in text

    assert "POST /v1/slides" in _error(client.post("/v1/jobs", json={"slide_id": UNKNOWN}), 404, "unknown_slide")
    unknown_model = client.post("/v1/jobs", json={"slide_id": slide_id, "model": "no_such_model"})
    assert "no_such_model" in _error(unknown_model, 422, "unknown_model")  # at submit, not when the job runs
    for path in (f"/v1/jobs/{UNKNOWN}", f"/v1/jobs/{UNKNOWN}/events"):
        _error(client.get(path), 404, "unknown_job")
    _error(client.delete(f"/v1/jobs/{UNKNOWN}"), 404, "unknown_job")
    _error(client.post(f"/v1/jobs/{UNKNOWN}/retry"), 404, "unknown_job")

    for bad in (
        {},
        {"slide_id": slide_id, "options": {"batch_size": 0}},
        {"slide_id": slide_id, "options": {"output_location": "s3://"}},
        {"slide_id": slide_id, "options": {"output_location": "../elsewhere"}},
    ):
        assert client.post("/v1/jobs", json=bad).status_code == 422, bad
    assert client.get("/v1/jobs", params={"state": "done"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_a_failed_job_is_retried(gateway: Gateway) -> None:
    gateway.script.tiler_errors["case.svs"] = (503, "storage_unavailable")
    job_id = gateway.job()
    gateway.run_jobs()
    failed = gateway.client.get(f"/v1/jobs/{job_id}").json()
    assert failed["state"] == "failed" and failed["error_code"] is None and "HTTP 503" in failed["error"]
    retried = gateway.client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 200 and retried.json()["state"] == "queued" and retried.json()["error"] is None


# --- results --------------------------------------------------------------------------------------


def test_results_contract(gateway: Gateway) -> None:
    client = gateway.client
    job_id = gateway.job()
    for route in RESULT_ROUTES:
        _error(client.get(f"/v1/jobs/{UNKNOWN}/{route}"), 404, "unknown_job")
        assert "queued" in _error(client.get(f"/v1/jobs/{job_id}/{route}"), 409, "result_not_ready")
    gateway.run_jobs()
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"

    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and result.json()["mitosis_count"] == 1
    assert result.json()["slide"]["name"] == "case.svs"
    geojson = client.get(f"/v1/jobs/{job_id}/result.geojson")
    assert geojson.headers["content-type"] == "application/geo+json" and geojson.json()["type"] == "FeatureCollection"
    csv = client.get(f"/v1/jobs/{job_id}/result.csv")
    assert csv.headers["content-type"].startswith("text/csv") and len(csv.text.strip().splitlines()) == 2
    overview = client.get(f"/v1/jobs/{job_id}/overview.png")
    assert overview.headers["content-type"] == "image/png" and overview.content.startswith(b"\x89PNG")


def test_a_refused_slide_answers_with_the_refusal_code(gateway: Gateway) -> None:
    gateway.script.tiler_errors["dark.svs"] = (422, "not_brightfield")
    job_id = gateway.job("dark.svs")
    gateway.run_jobs()
    job = gateway.client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error_code"] == "not_brightfield"
    for route in RESULT_ROUTES:
        _error(gateway.client.get(f"/v1/jobs/{job_id}/{route}"), 422, "not_brightfield")


@pytest.mark.parametrize(
    ("tiler_status", "tiler_code", "status", "code"),
    [
        (404, "slide_not_found", 404, "slide_not_found"),
        (422, "not_he", 422, "not_he"),
        (422, "storage_refused", 422, "storage_refused"),
        (500, "internal", 502, "bad_gateway"),
        (400, "bad_request", 502, "bad_gateway"),
        (503, "storage_unavailable", 503, "dependency_unavailable"),
        (429, "busy", 503, "dependency_unavailable"),
    ],
)
def test_the_overview_passes_on_what_the_tiler_said(
    gateway: Gateway, tiler_status: int, tiler_code: str, status: int, code: str
) -> None:
    job_id = gateway.job()
    gateway.run_jobs()
    gateway.script.tiler_errors["case.svs"] = (tiler_status, tiler_code)  # the slide changed since it was scored
    message = _error(gateway.client.get(f"/v1/jobs/{job_id}/overview.png"), status, code)
    assert f"HTTP {tiler_status}" in message and "the stub tiler answers" in message


def test_the_overview_while_the_tiler_is_down_is_503(gateway: Gateway, tmp_path: Path) -> None:
    job_id = gateway.job()
    gateway.run_jobs()
    down = _settings(tmp_path, gateway.urls, tiler_url=unused_url())  # the same database, a tiler that is down
    with TestClient(create_app(down)) as client:
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200
        message = _error(client.get(f"/v1/jobs/{job_id}/overview.png"), 503, "dependency_unavailable")
    assert "tiler" in message


# --- S3 events ------------------------------------------------------------------------------------


def test_s3_events_contract(gateway: Gateway) -> None:
    client = gateway.client
    created = client.post("/v1/events/s3", json={"Records": [S3_RECORD]})
    assert created.status_code == 200 and [set(j) for j in created.json()] == [JOB_KEYS]
    assert created.json()[0]["slide_location"] == "s3://scanner/a.svs"
    _error(client.post("/v1/events/s3", json={"Records": "none"}), 400, "bad_request")
    _error(client.post("/v1/events/s3", json={"Records": [{"eventName": "s3:ObjectCreated:Put"}]}), 400, "bad_request")
    nameless = {**S3_RECORD, "s3": {"bucket": {"name": ""}, "object": {"key": "a.svs"}}}
    _error(client.post("/v1/events/s3", json={"Records": [nameless]}), 400, "bad_request")
    assert client.post("/v1/events/s3", json=["not", "an", "event"]).status_code == 422
    assert client.post("/v1/events/s3", content=b"{", headers={"content-type": "application/json"}).status_code == 422


# --- the job database down ------------------------------------------------------------------------


def test_every_route_is_503_while_the_job_database_is_down(gateway: Gateway, tmp_path: Path) -> None:
    client = gateway.client
    job_id = gateway.job()
    slide_id = client.get("/v1/slides").json()[0]["id"]
    client.app.state.resources.engine.dispose()  # type: ignore[attr-defined]  # close the pooled connections
    shutil.move(tmp_path / "db", tmp_path / "db-away")  # and the database file is gone for new ones
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/slides", {"json": {"location": "case.svs"}}),
        ("GET", "/v1/slides", {}),
        ("GET", f"/v1/slides/{slide_id}", {}),
        ("POST", "/v1/jobs", {"json": {"slide_id": slide_id}}),
        ("GET", "/v1/jobs", {}),
        ("GET", f"/v1/jobs/{job_id}", {}),
        ("DELETE", f"/v1/jobs/{job_id}", {}),
        ("POST", f"/v1/jobs/{job_id}/retry", {}),
        ("GET", f"/v1/jobs/{job_id}/events", {}),
        ("POST", "/v1/events/s3", {"json": {"Records": [S3_RECORD]}}),
        *(("GET", f"/v1/jobs/{job_id}/{route}", {}) for route in RESULT_ROUTES),
    ]
    for method, path, kwargs in requests:
        _error(client.request(method, path, **kwargs), 503, "database_unavailable")
    _error(client.get("/health/ready"), 503, "not_ready")
    shutil.move(tmp_path / "db-away", tmp_path / "db")
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200  # back when the database is
