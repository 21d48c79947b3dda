"""`mitoscope up` / `down`: the whole local stack on loopback scores a slide over REST.

With `s3=True` the stack runs on a real S3 server (SeaweedFS): the upload lands in S3, the tiler
fetches the slide from there, and the aggregator writes the exports back to S3.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mitoscope.client import GatewayClient
from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.stack import S3_BUCKET, WATCH_FOLDER, Stack, StackError
from services.common import objectstore
from services.common.objectstore import S3Config
from services.detector.detector import open_detector
from services.detector.model import DEFAULT_MODEL_NAME
from tests.conftest import MODEL_REPOSITORY, REPO_ROOT, TRITON_VENV

pytestmark = pytest.mark.integration


def _score_over_rest(gateway: str, slide: Path, out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upload, score and download through the Python client, as the demo does."""
    with GatewayClient(gateway) as client:
        uploaded = client.upload(slide)
        job = client.start_job(uploaded["id"], options={"batch_size": 16})
        states: list[dict[str, Any]] = []
        final = client.follow(job["id"], states.append)
        assert final["state"] == "succeeded", final["error"]
        seen = [state["tiles_done"] for state in states]
        assert seen == sorted(seen) and seen[-1] == final["tiles_total"]  # progress only grows
        running = [state for state in states if state["state"] == "running" and state["tiles_done"]]
        assert running and all(state["eta_s"] is not None for state in running)
        files = client.download_results(job["id"], out_dir)
        assert [f.name for f in files] == ["result.json", "result.geojson", "result.csv", "overview.png"]
        assert (out_dir / "overview.png").read_bytes().startswith(b"\x89PNG")
        return uploaded, client.result(job["id"])


def _state(stack: Stack) -> dict[str, Any]:
    state = stack.state()
    assert state is not None, "no stack.json"
    return state


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_object(uri: str, config: S3Config) -> dict[str, Any] | None:
    try:
        return json.loads(b"".join(objectstore.chunks(uri, config)))
    except objectstore.NoSuchObjectError:
        return None


def _wait_for(read: Callable[[], dict[str, Any] | None], timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (found := read()) is None:
        assert time.monotonic() < deadline, "the watched slide was not scored"
        time.sleep(0.5)
    return found


@pytest.fixture(scope="module")
def local_result(e2e_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # The same two stages as the stack's detector service: the default model and its classifier.
    detector = open_detector(DEFAULT_MODEL_NAME, "onnxruntime", MODEL_REPOSITORY, "")
    result = score_slide(e2e_slide, tmp_path_factory.mktemp("local"), detector, ScoreOptions(batch_size=16))
    detector.close()
    return result


def _same_detections(remote: dict[str, Any], local: dict[str, Any]) -> None:
    assert remote["provenance"]["model"]["sha256"] == local["provenance"]["model"]["sha256"]
    for key in ("mean", "std"):
        assert remote["provenance"]["normalisation"]["source_lab"][key] == pytest.approx(
            local["provenance"]["normalisation"]["source_lab"][key], abs=1e-6
        )
    assert remote["mitosis_count"] == local["mitosis_count"]
    assert remote["hotspot"]["count"] == local["hotspot"]["count"]
    for ours, theirs in zip(remote["detections"], local["detections"], strict=True):
        assert (ours["x_px"], ours["y_px"]) == pytest.approx((theirs["x_px"], theirs["y_px"]), abs=0.5)


def test_stack_up_scores_over_rest_and_down_stops_everything(
    e2e_slide: Path, tmp_path: Path, local_result: dict[str, Any]
) -> None:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton")
    stack = Stack(REPO_ROOT, tmp_path / "slides", tmp_path / "stack")
    urls = stack.up()
    try:
        _, result = _score_over_rest(urls["gateway"], e2e_slide, tmp_path / "out")
        assert "triton" in httpx.get(f"{urls['detector']}/v1/models/yolov5n_mitosis").json()["backend"]
        # The supervisor restarts a service that dies, on the same URL.
        tiler_pid = _state(stack)["pids"]["tiler"]
        os.killpg(tiler_pid, signal.SIGKILL)
        restarted = _wait_for(lambda: _state(stack) if _state(stack)["restarts"]["tiler"] == 1 else None, 60)
        assert restarted["pids"]["tiler"] != tiler_pid and restarted["urls"]["tiler"] == urls["tiler"]
        assert httpx.get(f"{urls['tiler']}/health/live", timeout=5).status_code == 200
        # Scanner output: a slide dropped into the inbox is scored once (by the restarted tiler too),
        # its results beside it.
        shutil.copy(e2e_slide, tmp_path / "slides" / WATCH_FOLDER / "scanned.svs")
        watched = _wait_for(
            lambda: _read_json(tmp_path / "slides" / WATCH_FOLDER / "scanned.svs.mitoscope/result.json")
        )
        assert (tmp_path / "slides" / WATCH_FOLDER / "scanned.svs.mitoscope" / "overview.png").is_file()
        time.sleep(5)  # two more looks at the inbox
        jobs = httpx.get(f"{urls['gateway']}/v1/jobs").json()
        assert [j["slide_location"] for j in jobs].count(f"{WATCH_FOLDER}/scanned.svs") == 1  # scored once
    finally:
        stopped = stack.down()
    assert set(stopped) == {"triton", "tiler", "preprocess", "detector", "aggregator", "gateway"}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{urls['gateway']}/health/live", timeout=2)
    _same_detections(result, local_result)
    _same_detections(watched, local_result)


def test_stack_on_s3_stores_the_slide_and_the_exports_in_the_object_store(
    e2e_slide: Path, tmp_path: Path, local_result: dict[str, Any]
) -> None:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton")
    stack = Stack(REPO_ROOT, tmp_path / "slides", tmp_path / "stack", s3=True)
    urls = stack.up()
    try:
        config = stack.s3_config
        assert config is not None
        slide, result = _score_over_rest(urls["gateway"], e2e_slide, tmp_path / "out")
        assert slide["location"].startswith(f"s3://{S3_BUCKET}/uploads/")
        assert not [p for p in (tmp_path / "slides").rglob("*") if p.is_file()]  # no local copy kept
        assert objectstore.stat(slide["location"], config).size_bytes == e2e_slide.stat().st_size
        for service in ("tiler", "aggregator", "gateway"):
            assert httpx.get(f"{urls[service]}/health/ready").status_code == 200
        exports = result["exports"]
        assert set(exports) == {"result.json", "result.geojson", "result.csv", "overview.png"}
        assert b"".join(objectstore.chunks(exports["overview.png"], config)).startswith(b"\x89PNG")
        stored = json.loads(b"".join(objectstore.chunks(exports["result.json"], config)))
        assert stored["mitosis_count"] == result["mitosis_count"]
        csv_rows = b"".join(objectstore.chunks(exports["result.csv"], config)).decode().strip().splitlines()
        assert len(csv_rows) == 1 + result["mitosis_count"]
        # Scanner output written to the S3 inbox is scored once, its exports next to it.
        objectstore.put_file(f"s3://{S3_BUCKET}/{WATCH_FOLDER}/scanned.svs", e2e_slide, config)
        results_uri = f"s3://{S3_BUCKET}/{WATCH_FOLDER}/scanned.svs.mitoscope/result.json"
        watched = _wait_for(lambda: _read_object(results_uri, config))
    finally:
        stopped = stack.down()
    assert "s3" in stopped
    _same_detections(result, local_result)
    _same_detections(watched, local_result)


def _processes_with(text: str) -> int:
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                count += 1
        except OSError:
            continue
    return count


def test_a_stack_that_is_not_up_in_time_is_stopped_whole(tmp_path: Path) -> None:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton")
    tritons_before = _processes_with("bin/tritonserver")
    stack = Stack(REPO_ROOT, tmp_path / "slides", tmp_path / "stack")
    with pytest.raises(StackError, match="not up within 3 s"):
        stack.up(timeout_s=3)  # Triton alone takes longer: stopped while starting
    assert stack.state() is None
    assert _processes_with(str(tmp_path / "stack")) == 0  # no supervisor, no service
    assert _processes_with("bin/tritonserver") == tritons_before
    urls = stack.up()  # and the state dir is fit for a normal start afterwards
    assert httpx.get(f"{urls['gateway']}/health/ready", timeout=5).status_code == 200
    assert set(stack.down()) == {"triton", "tiler", "preprocess", "detector", "aggregator", "gateway"}
