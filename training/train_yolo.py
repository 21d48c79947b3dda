"""One-command, seeded recipe for the shipped YOLOv5n mitosis detector.

    python -m training.train_yolo --amibr ../shared/data/amibr --out runs/yolo

builds the dataset (`training.yolo_dataset`), trains ultralytics `yolov5n.yaml` from scratch
(no downloaded weights), exports ONNX and installs it under `model_repository/`. Runs offline:
`YOLO_OFFLINE=1` and a settings directory inside the repository's ignored `.cache/`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

from services.common.files import REPO_ROOT

PROG = "mitoscope train yolo"  # as invoked through the mitoscope CLI


def _offline_ultralytics() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO_ROOT / ".cache" / "ultralytics"))
    from ultralytics import settings

    off = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "vscode_msg", "openvino_msg")
    settings.update({key: False for key in off if key in settings})
    settings.update(
        {
            "weights_dir": str(REPO_ROOT / ".cache" / "ultralytics" / "weights"),
            "datasets_dir": str(REPO_ROOT / ".cache" / "ultralytics" / "datasets"),
        }
    )


def _finished_epochs(results_csv: Path) -> int:
    """Epochs ultralytics has recorded; training is skipped when all are done (rerun = resume the recipe)."""
    if not results_csv.exists():
        return 0
    return max(0, len(results_csv.read_text().strip().splitlines()) - 1)


def _training_seconds(results_csv: Path) -> float:
    rows = list(csv.DictReader(results_csv.open()))
    return float(rows[-1]["time"]) if rows and "time" in rows[-1] else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--amibr", type=Path, default=None, help="AMi-Br folder (real mitosis crops)")
    parser.add_argument("--synth-images", type=int, default=20, help="synthetic 2048 px images")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "yolo")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-yaml", default="yolov5n.yaml")
    parser.add_argument(
        "--install",
        type=Path,
        default=REPO_ROOT / "model_repository" / "yolov5n_mitosis",
        help="model folder to install the exported ONNX into",
    )
    args = parser.parse_args(argv)

    _offline_ultralytics()
    import torch
    from ultralytics import YOLO

    from training import onnx_export
    from training.dataset_hash import dataset_sha256
    from training.threshold import choose_threshold
    from training.yolo_dataset import build

    torch.set_num_threads(os.cpu_count() or 1)
    dataset_dir = args.out / "dataset"
    if not (dataset_dir / "manifest.json").exists():
        started = time.time()
        build(dataset_dir, args.amibr, args.synth_images, args.seed)
        print(f"dataset built in {time.time() - started:.0f} s")
    manifest = json.loads((dataset_dir / "manifest.json").read_text())

    results_csv = args.out / "train" / "results.csv"
    last = args.out / "train" / "weights" / "last.pt"
    finished = _finished_epochs(results_csv)
    if 0 < finished < args.epochs and last.exists():
        print(f"resuming after epoch {finished} from {last}")
        YOLO(str(last)).train(resume=True)
    elif finished < args.epochs:
        model = YOLO(args.model_yaml, task="detect")
        model.train(
            data=str(dataset_dir / "data.yaml"),
            epochs=args.epochs,
            imgsz=256,
            batch=args.batch,
            device="cpu",
            workers=2,
            seed=args.seed,
            deterministic=True,
            pretrained=False,
            project=str(args.out.resolve()),
            name="train",
            exist_ok=True,
            plots=False,
            amp=False,
            optimizer="AdamW",
            lr0=0.002,
            cos_lr=True,
            patience=100,
            close_mosaic=5,
            mosaic=1.0,
            fliplr=0.5,
            flipud=0.5,
            degrees=0.0,
            scale=0.25,
            translate=0.1,
            hsv_h=0.01,
            hsv_s=0.3,
            hsv_v=0.25,
            verbose=True,
        )
    train_s = _training_seconds(results_csv)
    best = args.out / "train" / "weights" / "best.pt"
    installed = args.install / "1" / "model.onnx"
    onnx_export.export_yolo(
        best,
        installed,
        target_lab=manifest["target_lab"],
        training_data_sha256=dataset_sha256(dataset_dir),
        extra={
            "train_seconds": f"{train_s:.0f}",
            "epochs": str(args.epochs),
            "recipe": "python -m training.train_yolo",
            "data": json.dumps(manifest["counts"]),
        },
    )
    choice = choose_threshold(installed, dataset_dir)
    onnx_export.set_metadata(
        installed,
        {"mitoscope.score_threshold": f"{choice.threshold:.2f}", "mitoscope.val_f1": f"{choice.counts.f1:.4f}"},
    )
    print(
        f"validation: threshold {choice.threshold:.2f} gives F1 {choice.counts.f1:.3f} "
        f"(precision {choice.counts.precision:.3f}, recall {choice.counts.recall:.3f})"
    )
    print(f"trained in {train_s:.0f} s; installed {installed}")


if __name__ == "__main__":
    main()
