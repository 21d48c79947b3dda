"""S3 bucket notifications become one job per new slide object, never two for the same content."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from services.gateway.app import Settings, create_app


def _event(key: str, etag: str, name: str = "s3:ObjectCreated:Put") -> dict[str, object]:
    return {
        "Records": [
            {
                "eventName": name,
                "s3": {"bucket": {"name": "scanner"}, "object": {"key": key, "eTag": etag, "size": 1234}},
            }
        ]
    }


def test_bucket_notifications_create_one_job_per_object_version(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", slide_root=tmp_path, worker_threads=0)
    with TestClient(create_app(settings)) as client:
        first = client.post("/v1/events/s3", json=_event("2026/case+17.svs", "abc"))
        assert first.status_code == 200
        (job,) = first.json()
        assert job["slide_location"] == "s3://scanner/2026/case 17.svs" and job["state"] == "queued"
        again = client.post("/v1/events/s3", json=_event("2026/case+17.svs", "abc")).json()
        assert [j["id"] for j in again] == [job["id"]]
        rewritten = client.post("/v1/events/s3", json=_event("2026/case+17.svs", "def")).json()
        assert rewritten[0]["id"] != job["id"]
        assert client.post("/v1/events/s3", json=_event("2026/notes.txt", "x")).json() == []
        assert client.post("/v1/events/s3", json=_event("a.svs", "x", "s3:ObjectRemoved:Delete")).json() == []
        bad = client.post("/v1/events/s3", json={"Records": [{"eventName": "s3:ObjectCreated:Put"}]})
        assert bad.status_code == 400 and "Records[0]" in bad.json()["message"]
        assert client.post("/v1/events/s3", json={"hello": 1}).status_code == 400
