"""Shared fixtures: synthetic slides made in tmp dirs, the shipped model, a real Triton server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
import pytest

from mitoscope.slide_files import make_slide, truth_path_for
from mitoscope.synth import SynthParams
from services.common.files import REPO_ROOT
from services.detector.backends import OnnxRuntimeBackend
from services.detector.triton_server import TritonServer
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODEL_PATH = MODEL_REPOSITORY / "yolov5n_mitosis" / "1" / "model.onnx"
SHARED = Path(os.environ.get("MITOSCOPE_SHARED", REPO_ROOT.parent / "shared"))
TRITON_VENV = REPO_ROOT / ".venv-triton"

# The end-to-end slide: 1 mm x 1 mm at 0.25 µm/px, dense enough in mitoses to measure recall.
E2E_PARAMS = SynthParams(width_px=4096, height_px=4096, seed=20261129, mitoses_per_mm2=24.0)


CLI_TIMEOUT_S = 120


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m mitoscope.cli ARGS` as a user runs it, wide enough that no line wraps."""
    return subprocess.run(
        [sys.executable, "-m", "mitoscope.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{relative} not in the shared data folder {SHARED}")
    return path


@pytest.fixture(scope="session")
def e2e_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "synthetic.svs"
    make_slide(path, E2E_PARAMS)
    return path


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.svs"
    make_slide(path, SynthParams(width_px=2048, height_px=1536, seed=5))
    return path


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton: `make setup` creates the local Triton server's venv")
    cache = tmp_path_factory.mktemp("triton")
    with TritonServer(
        MODEL_REPOSITORY, TRITON_VENV, REPO_ROOT / ".cache" / "triton", log_path=cache / "tritonserver.log"
    ) as server:
        yield server


@pytest.fixture(scope="session")
def e2e_tiles(e2e_slide: Path) -> np.ndarray:
    """Eight normalised 512 px tissue tiles of the end-to-end slide, centred on planted mitoses."""
    truth = json.loads(truth_path_for(e2e_slide).read_text())
    rgb = np.asarray(openslide.OpenSlide(str(e2e_slide)).read_region((0, 0), 0, (4096, 4096)).convert("RGB"))
    tiles = []
    for m in truth["mitoses"][:8]:
        x0 = int(np.clip(m["x_px"] - 256, 0, 4096 - 512))
        y0 = int(np.clip(m["y_px"] - 256, 0, 4096 - 512))
        tiles.append(rgb[y0 : y0 + 512, x0 : x0 + 512])
    target = LabStats.from_dict(OnnxRuntimeBackend(MODEL_PATH, threads=1).info.reinhard_target_lab)
    return ReinhardNormaliser(stats_from_images(tiles), target)(np.stack(tiles))
