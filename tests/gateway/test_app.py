"""The public API end to end: upload a slide, start a job, follow it, fetch its result over REST."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.stack import service
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from services.gateway.app import Settings, create_app
from tests.conftest import MODEL_PATH, MODEL_REPOSITORY

pytestmark = pytest.mark.integration


def test_upload_score_and_fetch_the_result_over_rest(e2e_slide: Path, tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    with ExitStack() as stack:
        urls = {
            "tiler_url": stack.enter_context(
                service(
                    "tiler", {"TILER_SLIDE_ROOT": str(slides), "TILER_CACHE_DIR": str(tmp_path / "cache")}, tmp_path
                )
            ),
            "preprocess_url": stack.enter_context(service("preprocess", {}, tmp_path)),
            "detector_url": stack.enter_context(
                service(
                    "detector",
                    {"DETECTOR_BACKEND": "onnxruntime", "DETECTOR_MODEL_REPOSITORY": str(MODEL_REPOSITORY)},
                    tmp_path,
                )
            ),
            "aggregator_url": stack.enter_context(service("aggregator", {}, tmp_path)),
        }
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
            slide_root=slides,
            max_upload_bytes=50 * 1024 * 1024,
            **urls,
        )
        with TestClient(create_app(settings)) as client:
            body = e2e_slide.read_bytes()
            uploaded = client.put(
                "/v1/slides/case.svs", content=body, headers={"x-content-sha256": hashlib.sha256(body).hexdigest()}
            )
            assert uploaded.status_code == 201, uploaded.text
            slide = uploaded.json()
            assert slide["sha256"] == hashlib.sha256(body).hexdigest() and slide["size_bytes"] == len(body)
            assert [s["id"] for s in client.get("/v1/slides").json()] == [slide["id"]]

            request = {"slide_id": slide["id"], "options": {"batch_size": 16}}
            job = client.post("/v1/jobs", json=request, headers={"idempotency-key": "lis-order-42"})
            assert job.status_code == 202
            again = client.post("/v1/jobs", json=request, headers={"idempotency-key": "lis-order-42"})
            assert again.status_code == 200 and again.json()["id"] == job.json()["id"]
            job_id = job.json()["id"]
            with client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
                text = "".join(events.iter_text())
            assert "event: end" in text and '"state":"succeeded"' in text
            final = client.get(f"/v1/jobs/{job_id}").json()
            assert final["state"] == "succeeded" and final["progress"] == 1.0
            result = client.get(f"/v1/jobs/{job_id}/result").json()
            geojson = client.get(f"/v1/jobs/{job_id}/result.geojson").json()
            csv_lines = client.get(f"/v1/jobs/{job_id}/result.csv").text.strip().splitlines()
            overview = client.get(f"/v1/jobs/{job_id}/overview.png")
            assert overview.status_code == 200 and overview.content.startswith(b"\x89PNG")

            assert client.get("/v1/jobs/nope").status_code == 404
            assert client.get("/v1/jobs/nope/result").json()["error"] == "unknown_job"
            assert client.post("/v1/jobs", json={"slide_id": "nope"}).status_code == 404
            assert client.post("/v1/slides", json={"location": "../outside.svs"}).status_code == 400
            mismatch = client.put("/v1/slides/x.svs", content=b"abc", headers={"x-content-sha256": "0" * 64})
            assert mismatch.status_code == 400 and "checksum mismatch" in mismatch.json()["message"]
            assert client.put("/v1/slides/notes.txt", content=b"abc").status_code == 400
            huge = client.put("/v1/slides/big.svs", content=b"\0" * (51 * 1024 * 1024))
            assert huge.status_code == 413
            assert client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]

    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH))
    local = score_slide(e2e_slide, tmp_path / "local", detector, ScoreOptions(batch_size=16))
    detector.close()
    assert result["mitosis_count"] == local["mitosis_count"]
    assert len([f for f in geojson["features"] if f["properties"]["objectType"] == "detection"]) == len(
        local["detections"]
    )
    assert len(csv_lines) == 1 + local["mitosis_count"]
    leftovers = [p for p in slides.rglob("*") if p.name.endswith(".partial")]
    assert not leftovers
