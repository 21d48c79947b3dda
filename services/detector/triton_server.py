"""Start and stop a local Triton Inference Server: the `tritonserver` binary of `nvidia-pytriton`.

The binary runs on the CPU with the Python backend, which runs ONNX Runtime inside the model
(`model_repository/<model>/1/model.py`). It lives in its own virtual environment (the wheel
pins numpy<2); the backend stub imports numpy and onnxruntime from the venv whose `bin` comes
first on PATH. Always bound to 127.0.0.1 on the ports given.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.common.process import ManagedProcess, OneProcessServer, ProcessStartError, free_port

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_GRACE_S = 15.0
READY_PROBE_TIMEOUT_S = 2.0


class TritonServerError(RuntimeError):
    """The local Triton server could not be found or did not start."""


@dataclass(frozen=True)
class TritonInstall:
    venv: Path
    site_packages: Path

    @classmethod
    def find(cls, venv: Path) -> TritonInstall:
        candidates = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
        if not candidates:
            raise TritonServerError(
                f"no tritonserver in {venv}; create it with `make triton-venv` (installs nvidia-pytriton)"
            )
        return cls(venv, candidates[0].parents[3])

    @property
    def binary(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    def backend_directory(self, cache_dir: Path) -> Path:
        """A backends folder with the Python backend and the stub for this venv's Python."""
        python_version = next(self.venv.glob("lib/python3*")).name.removeprefix("python")
        target = cache_dir / f"triton-backends-py{python_version}"
        stub = (
            self.site_packages
            / "pytriton/tritonserver/python_backend_stubs"
            / python_version
            / "triton_python_backend_stub"
        )
        if not (target / "python" / "triton_python_backend_stub").exists():
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.site_packages / "pytriton/tritonserver/backends/python", tmp / "python")
            shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        return target


class TritonServer(OneProcessServer):
    """A tritonserver process on loopback; use as a context manager."""

    def __init__(
        self,
        model_repository: Path,
        venv: Path,
        cache_dir: Path,
        grpc_port: int | None = None,
        http_port: int | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        self.install = TritonInstall.find(venv)
        self.model_repository = model_repository
        self.cache_dir = cache_dir
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.log_path = log_path or cache_dir / "tritonserver.log"
        self.start_timeout_s = start_timeout_s
        self._process: ManagedProcess | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        backends = self.install.backend_directory(self.cache_dir)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(self.install.site_packages / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")]
        )
        env["PATH"] = os.pathsep.join([str(self.install.venv / "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)
        command = [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        log.info("starting tritonserver on %s", self.grpc_url)
        self._process = ManagedProcess(
            command,
            self.log_path,
            name="tritonserver",
            env=env,
            ready=self._ready,
            ready_timeout_s=self.start_timeout_s,
            stop_grace_s=DEFAULT_STOP_GRACE_S,
        )
        try:
            self._process.start()
        except ProcessStartError as e:
            raise TritonServerError(str(e)) from e

    def _ready(self) -> bool:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            try:
                return bool(client.is_server_ready(client_timeout=READY_PROBE_TIMEOUT_S))
            except InferenceServerException:  # not listening yet
                return False
