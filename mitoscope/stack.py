"""The whole local stack on 127.0.0.1: Triton, the four services and the gateway, supervised.

`mitoscope up` starts it and writes `.cache/stack/stack.json` (pids and URLs); `mitoscope down`
stops what that file names. Every process binds loopback on a free port; logs go to
`.cache/stack/*.log`. With `s3=True` a SeaweedFS S3 server is started first: uploads go to its
`mitoscope` bucket and every service reads and writes `s3://` locations there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mitoscope.s3server import SeaweedS3, remove_grpc_sockets
from services.common import objectstore
from services.common.objectstore import S3Config
from services.detector.triton_server import TritonServer, free_port
from services.gateway.orchestrate import ServiceUrls

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
SERVICES = ("tiler", "preprocess", "detector", "aggregator", "gateway")
S3_BUCKET = "mitoscope"
WATCH_FOLDER = "inbox"  # under the slide root, or the S3 bucket with --s3


def start_service(
    name: str, env: dict[str, str], log_dir: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `services.<name>.app:create_app` under uvicorn on 127.0.0.1; returns it once live."""
    port = port or free_port()
    log = (log_dir / f"{name}.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"services.{name}.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log_dir / f'{name}.log'}")
        try:
            if httpx.get(f"{url}/health/live", timeout=1.0).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_process(process)
            raise TimeoutError(f"{name} did not start within {START_TIMEOUT_S} s; see {log_dir / f'{name}.log'}")
        time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


@contextmanager
def service(name: str, env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """A service for the duration of a `with` block; yields its base URL."""
    process, url = start_service(name, env, log_dir)
    try:
        yield url
    finally:
        stop_process(process)


def pipeline_services(exits: ExitStack, slide_root: Path, work_dir: Path, detector_env: dict[str, str]) -> ServiceUrls:
    """Tiler, preprocess, detector and aggregator, stopped when `exits` closes; their URLs."""
    tiler_env = {"TILER_SLIDE_ROOT": str(slide_root), "TILER_CACHE_DIR": str(work_dir / "cache")}
    return ServiceUrls(
        tiler=exits.enter_context(service("tiler", tiler_env, work_dir)),
        preprocess=exits.enter_context(service("preprocess", {}, work_dir)),
        detector=exits.enter_context(service("detector", detector_env, work_dir)),
        aggregator=exits.enter_context(service("aggregator", {}, work_dir)),
    )


@dataclass
class Stack:
    repo_root: Path
    slide_root: Path
    state_dir: Path
    s3: bool = False
    urls: dict[str, str] = field(default_factory=dict)
    s3_config: S3Config | None = None
    s3_socket_dir: Path | None = None  # weed's sockets in /tmp when the state dir's path is too long

    def _start_s3(self) -> tuple[int, dict[str, int]]:
        server = SeaweedS3(self.state_dir / "s3")
        server.start()
        try:
            self.s3_config = S3Config(server.endpoint, server.access_key, server.secret_key)
            objectstore.make_bucket(S3_BUCKET, self.s3_config)
        except BaseException:
            server.stop()
            raise
        self.urls["s3"] = f"http://{server.endpoint}"
        self.s3_socket_dir = server.temp_socket_dir
        assert server.pid is not None
        return server.pid, server.ports

    def up(self) -> dict[str, str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.slide_root.mkdir(parents=True, exist_ok=True)
        pids: dict[str, int] = {}
        s3_ports: dict[str, int] = {}
        if self.s3:
            pids["s3"], s3_ports = self._start_s3()
        triton = TritonServer(
            self.repo_root / "model_repository",
            self.repo_root / ".venv-triton",
            self.repo_root / ".cache" / "triton",
            log_path=self.state_dir / "triton.log",
        )
        try:
            triton.start()
        except BaseException:
            self.down(pids, s3_ports)
            raise
        pids["triton"] = triton.pid or 0
        env = {
            "TILER_SLIDE_ROOT": str(self.slide_root),
            "TILER_CACHE_DIR": str(self.state_dir / "cache"),
            "DETECTOR_BACKEND": "triton",
            "DETECTOR_TRITON_URL": triton.grpc_url,
            "DETECTOR_MODEL_REPOSITORY": str(self.repo_root / "model_repository"),
            "GATEWAY_SLIDE_ROOT": str(self.slide_root),
            "GATEWAY_DATABASE_URL": f"sqlite:///{self.state_dir / 'gateway.db'}",
            # New slides dropped into <slide root>/inbox are scored; results land next to them.
            "GATEWAY_WATCH_LOCATION": WATCH_FOLDER,
            "GATEWAY_WATCH_POLL_S": "2",
            "GATEWAY_WATCH_SETTLE_S": "2",
            "AGGREGATOR_OUTPUT_ROOT": str(self.slide_root),
        }
        if self.s3_config is not None:
            env |= self.s3_config.env() | {
                "GATEWAY_UPLOAD_LOCATION": f"s3://{S3_BUCKET}/uploads",
                "GATEWAY_RESULTS_LOCATION": f"s3://{S3_BUCKET}/results",
                "GATEWAY_WATCH_LOCATION": f"s3://{S3_BUCKET}/{WATCH_FOLDER}",
            }
        self.urls["triton_grpc"] = triton.grpc_url
        try:
            for name in SERVICES:
                if name == "gateway":
                    env.update({f"GATEWAY_{n.upper()}_URL": self.urls[n] for n in SERVICES if n != "gateway"})
                process, url = start_service(name, env, self.state_dir)
                pids[name] = process.pid
                self.urls[name] = url
        except BaseException:
            self.down(pids, s3_ports)
            raise
        state = {"pids": pids, "urls": self.urls, "s3_ports": s3_ports, "s3_socket_dir": str(self.s3_socket_dir or "")}
        (self.state_dir / "stack.json").write_text(json.dumps(state, indent=1))
        return self.urls

    def down(self, pids: dict[str, int] | None = None, s3_ports: dict[str, int] | None = None) -> list[str]:
        state = self.state_dir / "stack.json"
        if pids is None:
            if not state.exists():
                return []
            saved = json.loads(state.read_text())
            pids, s3_ports = saved["pids"], saved.get("s3_ports", {})
            self.s3_socket_dir = Path(saved["s3_socket_dir"]) if saved.get("s3_socket_dir") else None
        stopped = []
        for name, pid in pids.items():
            try:
                os.killpg(pid, signal.SIGTERM)
                stopped.append(name)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for pid in pids.values():
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        remove_grpc_sockets(s3_ports or {})
        if self.s3_socket_dir is not None:
            shutil.rmtree(self.s3_socket_dir, ignore_errors=True)
        state.unlink(missing_ok=True)
        return stopped
