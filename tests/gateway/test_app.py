"""The public API end to end: upload a slide, start a job, follow it, fetch its result over REST."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
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
            uploaded = client.post(
                "/v1/slides",
                files={"file": ("case.svs", body, "application/octet-stream")},
                headers={"x-content-sha256": hashlib.sha256(body).hexdigest()},
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
            assert [j["id"] for j in client.get("/v1/jobs", params={"state": "succeeded"}).json()] == [job_id]
            assert client.get("/v1/jobs", params={"state": "queued"}).json() == []
            assert client.get("/v1/jobs", params={"state": "done"}).status_code == 422
            result = client.get(f"/v1/jobs/{job_id}/result").json()
            geojson = client.get(f"/v1/jobs/{job_id}/result.geojson").json()
            csv_lines = client.get(f"/v1/jobs/{job_id}/result.csv").text.strip().splitlines()
            overview = client.get(f"/v1/jobs/{job_id}/overview.png")
            assert overview.status_code == 200 and overview.content.startswith(b"\x89PNG")

            assert client.get("/v1/jobs/nope").status_code == 404
            assert client.get("/v1/jobs/nope/result").json()["error"] == "unknown_job"
            assert client.post("/v1/jobs", json={"slide_id": "nope"}).status_code == 404
            assert client.post("/v1/slides", json={"location": "../outside.svs"}).status_code == 400
            padded = client.post(
                "/v1/slides",
                content=b'{"location": "' + b"x" * 100_000 + b'"}',
                headers={"content-type": "application/json"},
            )
            assert padded.status_code == 413
            mismatch = client.post(
                "/v1/slides", files={"file": ("x.svs", b"abc")}, headers={"x-content-sha256": "0" * 64}
            )
            assert mismatch.status_code == 400 and "checksum mismatch" in mismatch.json()["message"]
            assert client.post("/v1/slides", files={"file": ("notes.txt", b"abc")}).status_code == 400
            no_file = client.post("/v1/slides", files={"other": ("x.svs", b"abc")})
            assert no_file.status_code == 400 and "-F file=@" in no_file.json()["message"]
            broken = client.post(
                "/v1/slides",
                content=b"--zz\r\nnot headers",
                headers={"content-type": "multipart/form-data; boundary=zz"},
            )
            assert broken.status_code == 400 and broken.json()["error"] == "bad_upload"
            wrong_type = client.post("/v1/slides", content=b"abc", headers={"content-type": "image/tiff"})
            assert wrong_type.status_code == 415 and "multipart/form-data" in wrong_type.json()["message"]
            huge = client.post("/v1/slides", files={"file": ("big.svs", b"\0" * (51 * 1024 * 1024))})
            assert huge.status_code == 413

            def chunked() -> Iterator[bytes]:  # no content-length: refused at the chunk that crosses the limit
                yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="big.svs"\r\n\r\n'
                for _ in range(60):
                    yield b"\0" * (1024 * 1024)
                yield b"\r\n--zz--\r\n"

            streamed = client.post(
                "/v1/slides", content=chunked(), headers={"content-type": "multipart/form-data; boundary=zz"}
            )
            assert streamed.status_code == 413 and streamed.json()["error"] == "upload_too_large"
            assert client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]

    detector = ModelDetector(OnnxRuntimeBackend(MODEL_PATH))
    local = score_slide(e2e_slide, tmp_path / "local", detector, ScoreOptions(batch_size=16))
    detector.close()
    assert result["mitosis_count"] == local["mitosis_count"]
    assert len([f for f in geojson["features"] if f["properties"]["objectType"] == "detection"]) == len(
        local["detections"]
    )
    assert len(csv_lines) == 1 + local["mitosis_count"]
    uploads = [p.name for p in (slides / "uploads").rglob("*") if p.is_file()]
    assert uploads == ["case.svs"]  # what failed left nothing behind
