"""One epoch of each recipe on a tiny synthetic dataset, then export, then a real Triton round trip.

Runs in the training venv (`.venv-train`, torch + ultralytics), which `make test` creates; the
serving code under test never imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from services.detector.backends import OnnxRuntimeBackend, TritonBackend
from services.detector.triton_repository import main as generate_configs
from services.detector.triton_server import TritonServer
from tests.conftest import REPO_ROOT, TRITON_VENV

TRAIN_PYTHON = REPO_ROOT / ".venv-train" / "bin" / "python"

pytestmark = pytest.mark.integration


def _train(*args: str, cwd: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(REPO_ROOT / ".cache" / "ultralytics"),
    }
    proc = subprocess.run(
        [str(TRAIN_PYTHON), "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def trained_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TRAIN_PYTHON.exists():
        pytest.skip("no .venv-train: `make train-venv` creates it")
    work = tmp_path_factory.mktemp("train")
    repository = work / "model_repository"
    _train(
        "training.train_yolo",
        "--synth-images",
        "2",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--out",
        str(work / "yolo"),
        "--install",
        str(repository / "yolov5n_mitosis"),
        cwd=work,
    )
    _train(
        "training.train_frcnn",
        "--dataset",
        str(work / "yolo" / "dataset"),
        "--out",
        str(work / "frcnn"),
        "--epochs",
        "1",
        "--limit",
        "8",
        "--install",
        str(repository / "faster_rcnn_mitosis"),
        cwd=work,
    )
    for model in ("yolov5n_mitosis", "faster_rcnn_mitosis"):
        generate_configs([str(repository / model)])
    return repository


def test_both_recipes_write_a_run_folder_and_a_servable_model(trained_repository: Path) -> None:
    work = trained_repository.parent
    assert (work / "yolo" / "train" / "results.csv").is_file()
    assert (work / "yolo" / "train" / "weights" / "best.pt").is_file()
    assert json.loads((work / "frcnn" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
    yolo = OnnxRuntimeBackend(trained_repository / "yolov5n_mitosis" / "1" / "model.onnx", threads=1)
    assert 0.0 < yolo.info.score_threshold < 1.0  # chosen on the validation split
    assert yolo.info.extra["recipe"] == "python -m training.train_yolo"
    yolo.close()
    frcnn = OnnxRuntimeBackend(trained_repository / "faster_rcnn_mitosis" / "1" / "model.onnx", threads=1)
    assert frcnn.info.output_format == "xyxy_score_class"
    out = frcnn.infer(np.zeros((3, 512, 512, 3), np.uint8))
    assert out.shape == (3, 100, 6)
    frcnn.close()


def test_triton_serves_both_trained_models_like_onnxruntime(trained_repository: Path, tmp_path: Path) -> None:
    if not TRITON_VENV.exists():
        pytest.skip("no .venv-triton")
    tiles = np.random.default_rng(1).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    with TritonServer(
        trained_repository, TRITON_VENV, REPO_ROOT / ".cache" / "triton", log_path=tmp_path / "triton.log"
    ) as server:
        for model in ("yolov5n_mitosis", "faster_rcnn_mitosis"):
            local = OnnxRuntimeBackend(trained_repository / model / "1" / "model.onnx", threads=1)
            remote = TritonBackend(server.grpc_url, model)
            try:
                np.testing.assert_allclose(remote.infer(tiles), local.infer(tiles), atol=1e-4)
            finally:
                local.close()
                remote.close()
    shutil.rmtree(trained_repository.parent / "yolo" / "dataset", ignore_errors=True)
