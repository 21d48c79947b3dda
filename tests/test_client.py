"""The gateway client against real servers on 127.0.0.1: each failure arrives as the client's own error."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from mitoscope.client import (
    GatewayAnswerError,
    GatewayBusyError,
    GatewayClient,
    GatewayConflictError,
    GatewayConnectError,
    GatewayConnectionLostError,
    GatewayError,
    GatewayNotFoundError,
    GatewayRefusedError,
    GatewayServerError,
    GatewayTimeoutError,
    GatewayUnavailableError,
    JobFailedError,
)

SERVER_START_TIMEOUT_S = 10.0
SLOW_ANSWER_S = 2.0
RESULT = {"slide": {"name": "case.svs"}, "mitosis_count": 3}


def _job(job_id: str, state: str, done: int, error: str | None = None) -> dict[str, Any]:
    return {"id": job_id, "state": state, "tiles_done": done, "tiles_total": 4, "error": error, "error_code": None}


def _events(*states: tuple[str, dict[str, Any]]) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        for event, state in states:
            yield f"event: {event}\ndata: {json.dumps(state)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


def _refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _stub_gateway() -> FastAPI:
    """The gateway's routes as the client uses them; job ids choose the behaviour."""
    app = FastAPI()

    @app.post("/v1/slides", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        await request.body()
        return {"id": "slide-1", "name": "case.svs"}

    @app.post("/v1/jobs", status_code=202)
    async def start(request: Request) -> dict[str, Any]:
        options = (await request.json())["options"]
        return _job("job-fails" if options.get("fail") else "job-ok", "queued", 0)

    @app.get("/v1/jobs/{job_id}/events", response_model=None)
    def events(job_id: str) -> Response:
        if job_id == "job-ok":
            return _events(("progress", _job(job_id, "running", 2)), ("end", _job(job_id, "succeeded", 4)))
        if job_id == "job-fails":
            return _events(("end", _job(job_id, "failed", 1, "the detector refused the batch")))
        if job_id == "cut-short":
            return _events(("progress", _job(job_id, "running", 2)))
        return _refusal(404, "unknown_job", f"no job {job_id!r}")

    @app.get("/v1/jobs/{job_id}/result", response_model=None)
    async def result(job_id: str) -> Response:
        match job_id:
            case "job-ok":
                return JSONResponse(RESULT)
            case "running":
                return _refusal(409, "result_not_ready", "the job is running; follow its events")
            case "busy":
                return _refusal(503, "dependency_unavailable", "the tiler is down", {"retry-after": "7"})
            case "broken":
                return PlainTextResponse("Internal Server Error", status_code=500)
            case "not-json":
                return PlainTextResponse("<html>a different server</html>")
            case "slow":
                await asyncio.sleep(SLOW_ANSWER_S)
                return JSONResponse(RESULT)
        return _refusal(404, "unknown_job", f"no job {job_id!r}")

    @app.get("/v1/jobs/{job_id}/{export}")
    def export(job_id: str, export: str) -> Response:
        body = json.dumps(RESULT) if export == "result" else f"{export} of {job_id}"
        return PlainTextResponse(body)

    return app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_stub_gateway(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the stub gateway did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(SERVER_START_TIMEOUT_S)
    sock.close()


@pytest.fixture()
def client(gateway: str) -> Iterator[GatewayClient]:
    with GatewayClient(gateway) as c:
        yield c


def test_follow_translates_a_refused_stream_instead_of_raising_response_not_read(client: GatewayClient) -> None:
    with pytest.raises(GatewayNotFoundError, match="unknown_job: no job 'nope'") as caught:
        client.follow("nope")
    assert caught.value.status_code == 404 and caught.value.error_code == "unknown_job"


def test_a_closed_port_raises_a_connect_error_with_the_httpx_cause(tmp_path: Path) -> None:
    slide = tmp_path / "case.svs"
    slide.write_bytes(b"slide")
    with GatewayClient(f"http://127.0.0.1:{_closed_port()}") as client:
        with pytest.raises(GatewayConnectError, match="mitoscope up") as caught:
            client.upload(slide)
        with pytest.raises(GatewayConnectError):
            client.follow("job-ok")
    assert isinstance(caught.value, GatewayUnavailableError)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_follow_reports_every_state_and_returns_the_final_one(client: GatewayClient) -> None:
    states: list[dict[str, Any]] = []
    final = client.follow("job-ok", states.append)
    assert [s["state"] for s in states] == ["running", "succeeded"]
    assert final == states[-1]


def test_an_event_stream_that_ends_before_its_job_is_a_lost_connection(client: GatewayClient) -> None:
    with pytest.raises(GatewayConnectionLostError, match="ended before job cut-short did"):
        client.follow("cut-short")


@pytest.mark.parametrize(
    ("job_id", "error", "status", "code"),
    [
        ("running", GatewayConflictError, 409, "result_not_ready"),
        ("busy", GatewayBusyError, 503, "dependency_unavailable"),
        ("broken", GatewayServerError, 500, None),
    ],
)
def test_error_answers_map_to_the_tree(
    client: GatewayClient, job_id: str, error: type[GatewayError], status: int, code: str | None
) -> None:
    with pytest.raises(error, match=f"GET /v1/jobs/{job_id}/result: HTTP {status}") as caught:
        client.result(job_id)
    assert (caught.value.status_code, caught.value.error_code) == (status, code)


def test_busy_carries_retry_after_and_is_transient(client: GatewayClient) -> None:
    with pytest.raises(GatewayBusyError) as caught:
        client.result("busy")
    assert isinstance(caught.value, GatewayUnavailableError) and caught.value.retry_after_s == 7.0
    assert not issubclass(GatewayRefusedError, GatewayUnavailableError)
    assert not issubclass(GatewayServerError, GatewayUnavailableError)


def test_an_answer_that_is_not_json_names_the_likely_cause(client: GatewayClient) -> None:
    with pytest.raises(GatewayAnswerError, match="mitoscope gateway"):
        client.result("not-json")


def test_a_slow_answer_is_a_timeout(gateway: str) -> None:
    with GatewayClient(gateway, timeout_s=0.2) as client, pytest.raises(GatewayTimeoutError) as caught:
        client.result("slow")
    assert isinstance(caught.value, GatewayUnavailableError)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_a_connection_cut_mid_answer_is_a_lost_connection() -> None:
    """A server that promises 100 bytes and closes after 2: httpx sees a broken answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_half() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{}")

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    try:
        with GatewayClient(f"http://127.0.0.1:{listener.getsockname()[1]}") as client:
            with pytest.raises(GatewayConnectionLostError) as caught:
                client.result("job-ok")
        assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    finally:
        thread.join(SERVER_START_TIMEOUT_S)
        listener.close()


def test_score_uploads_follows_and_downloads_every_export(client: GatewayClient, tmp_path: Path) -> None:
    slide = tmp_path / "case.svs"
    slide.write_bytes(b"slide")
    states: list[dict[str, Any]] = []
    result = client.score(slide, tmp_path / "out", on_progress=states.append)
    assert result == RESULT
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "overview.png",
        "result.csv",
        "result.geojson",
        "result.json",
    ]
    assert states[-1]["state"] == "succeeded"


def test_score_raises_job_failed_with_the_final_state(client: GatewayClient, tmp_path: Path) -> None:
    slide = tmp_path / "case.svs"
    slide.write_bytes(b"slide")
    with pytest.raises(JobFailedError, match="job job-fails failed: the detector refused the batch") as caught:
        client.score(slide, tmp_path / "out", options={"fail": True})
    assert caught.value.job["state"] == "failed"
    assert not (tmp_path / "out").exists()
