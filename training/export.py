"""Export a trained checkpoint to the serving ONNX contract and install it in a model repository.

    python -m training.export yolo runs/yolo/train/weights/best.pt --dataset runs/yolo/dataset \\
        --install model_repository/yolov5n_mitosis
    python -m training.export frcnn runs/frcnn/best.pt --dataset runs/yolo/dataset \\
        --install model_repository/faster_rcnn_mitosis

The dataset folder supplies the Reinhard target and the training-data hash that travel in the
ONNX metadata; for YOLO the score threshold is chosen again on its validation split. Then the
Triton configs (cpu and gpu) and the Python-backend `model.py` are regenerated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROG = "mitoscope export"  # as invoked through the mitoscope CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("architecture", choices=["yolo", "frcnn"])
    parser.add_argument("checkpoint", type=Path, help="the run's best.pt (YOLO or Faster R-CNN)")
    parser.add_argument("--dataset", type=Path, required=True, help="the dataset folder the model was trained on")
    parser.add_argument("--install", type=Path, required=True, help="model_repository/<model name>")
    parser.add_argument("--version", default="1", help="model version folder")
    args = parser.parse_args(argv)

    from services.detector.triton_repository import main as generate_configs
    from training import onnx_export
    from training.dataset_hash import dataset_sha256
    from training.threshold import choose_threshold

    manifest = json.loads((args.dataset / "manifest.json").read_text())
    onnx_path = args.install / args.version / "model.onnx"
    extra = {"data": json.dumps(manifest["counts"]), "training_data_sha256": dataset_sha256(args.dataset)}
    if args.architecture == "yolo":
        onnx_export.export_yolo(
            args.checkpoint,
            onnx_path,
            manifest["target_lab"],
            extra.pop("training_data_sha256"),
            extra=extra,
            model_name=args.install.name,
            version=args.version,
        )
        choice = choose_threshold(onnx_path, args.dataset)
        onnx_export.set_metadata(onnx_path, {"mitoscope.score_threshold": f"{choice.threshold:.2f}"})
    else:
        onnx_export.export_frcnn(
            args.checkpoint,
            onnx_path,
            manifest["target_lab"],
            extra=extra,
            model_name=args.install.name,
            version=args.version,
        )
    generate_configs([str(args.install)])
    print(f"exported {onnx_path}")


if __name__ == "__main__":
    main()
