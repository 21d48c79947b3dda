"""The shared web layer: every service and the gateway answer errors as {"error", "message"}."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from services.gateway.app import create_app as gateway_app
from services.gateway.settings import Settings as GatewaySettings
from services.tiler.app import create_app as tiler_app


def test_validation_errors_use_the_documented_shape(tmp_path: Path) -> None:
    with TestClient(tiler_app()) as tiler:
        answer = tiler.post("/v1/plan", json={"location": 42, "tile_px": "wide"})
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "invalid_request" and "tile_px" in body["message"]
    assert {tuple(f["loc"]) for f in body["fields"]} >= {("body", "tile_px")}
    settings = GatewaySettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", worker_threads=0)
    with TestClient(gateway_app(settings)) as gateway:
        listed = gateway.get("/v1/jobs", params={"state": "done"})
    assert listed.status_code == 422 and listed.json()["error"] == "invalid_request"


def test_tiler_refuses_impossible_geometry_with_422_not_500() -> None:
    with TestClient(tiler_app()) as tiler:
        for bad in (
            {"location": "a.svs", "tile_px": 0},
            {"location": "a.svs", "model_mpp_um_per_px": 0},
            {"location": "a.svs", "mpp_um_per_px": 1e300},
            {"location": "a.svs", "tile_px": 256, "overlap_px": 256},
            {"location": "a\x00.svs"},
            {"location": "x" * 5000},
        ):
            answer = tiler.post("/v1/plan", json=bad)
            assert answer.status_code == 422 and answer.json()["error"] == "invalid_request", (bad, answer.text)


def test_gateway_refuses_bad_job_options_at_submit(tmp_path: Path) -> None:
    settings = GatewaySettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", worker_threads=0)
    with TestClient(gateway_app(settings)) as gateway:
        for body in (
            {"slide_id": "s", "options": {"field_diameter_mm": 0.52}},  # not in the CAP table
            {"slide_id": "s", "options": {"field_diameter_mm": 1e300}},
            {"slide_id": "s", "model": "m" * 300},
            {"slide_id": "s", "model": "yolo\x00"},
            {"slide_id": "s", "model": "../etc/passwd"},
            {"slide_id": "s", "options": {"output_location": "jobs/\x00"}},
        ):
            answer = gateway.post("/v1/jobs", json=body)
            assert answer.status_code == 422 and answer.json()["error"] == "invalid_request", (body, answer.text)
        for location in ("slides/\x00.svs", "x" * 5000):  # registration parses its body itself: 400
            answer = gateway.post("/v1/slides", json={"location": location})
            assert answer.status_code == 400 and "location" in answer.json()["message"], answer.text


def test_a_model_is_not_refused_at_submit_while_the_detector_cannot_be_asked(tmp_path: Path) -> None:
    from services.detector.triton_server import free_port

    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "case.svs").write_bytes(b"a slide")
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        worker_threads=0,
        slide_root=tmp_path / "slides",
        detector_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: the job waits for it
    )
    with TestClient(gateway_app(settings)) as gateway:
        slide = gateway.post("/v1/slides", json={"location": "case.svs"})
        assert slide.status_code == 201, slide.text
        job = gateway.post("/v1/jobs", json={"slide_id": slide.json()["id"], "model": "faster_rcnn_mitosis"})
    assert job.status_code == 202 and job.json()["model"] == "faster_rcnn_mitosis"
