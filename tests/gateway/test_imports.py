"""The gateway and its workers load no `mitoscope` code (the in-process scorer, ONNX Runtime)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

IMPORT_TIMEOUT_S = 60


def test_the_gateway_and_its_workers_load_no_mitoscope_code() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, services.gateway.app, services.gateway.worker, services.watcher\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mitoscope', 'onnxruntime', 'tritonclient'}))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
