"""Export trained detectors to the ONNX contract the detector service serves.

Contract (read by `services.detector.model`):
- input `images`: uint8 [batch, H, W, 3] RGB, Reinhard-normalised tiles (the graph itself
  casts, scales to 0..1 and transposes, so clients send 4x fewer bytes than float32);
- output `detections`, by `mitoscope.output_format`:
  - `yolo_cxcywh_scores`: float32 [batch, 4 + classes, anchors] (centre x, centre y, width,
    height in input pixels, then per-class scores);
  - `xyxy_score_class`: float32 [n, 6] (x0, y0, x1, y1, score, class id) for one image; the
    graph takes a batch of exactly one (torchvision's Faster R-CNN exports per image), and the
    backends run it image by image;
- `metadata_props` keys prefixed `mitoscope.`: model name, version, input size, MPP, class
  names, output format, Reinhard target, training-data hash.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

INPUT_NAME = "images"
OUTPUT_NAME = "detections"
INPUT_SIZE_PX = 512
MPP_UM_PER_PX = 0.25
OPSET = 17


def _prepend_uint8_nhwc(model_path: Path, out_path: Path, metadata: dict[str, str]) -> None:
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    old_input = graph.input[0]
    old_name = old_input.name
    float_name = "images_float_nchw"
    for node in graph.node:
        node.input[:] = [float_name if name == old_name else name for name in node.input]
    graph.input.remove(old_input)
    graph.input.insert(
        0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", INPUT_SIZE_PX, INPUT_SIZE_PX, 3])
    )
    scale = helper.make_tensor("uint8_scale", TensorProto.FLOAT, [], [1.0 / 255.0])
    graph.initializer.append(scale)
    pre = [
        helper.make_node("Transpose", [INPUT_NAME], ["images_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["images_nchw"], ["images_nchw_f32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["images_nchw_f32", "uint8_scale"], [float_name]),
    ]
    for i, node in enumerate(pre):
        graph.node.insert(i, node)
    old_output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [OUTPUT_NAME if name == old_output else name for name in node.output]
    graph.output[0].name = OUTPUT_NAME
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))


def set_metadata(model_path: Path, entries: dict[str, str]) -> None:
    """Add or replace `metadata_props` entries of an ONNX file in place."""
    import onnx

    model = onnx.load(str(model_path))
    kept = {p.key: p.value for p in model.metadata_props}
    kept.update(entries)
    del model.metadata_props[:]
    for key, value in kept.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    tmp = model_path.with_name(model_path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(model_path)


def export_yolo(
    weights: Path,
    out_path: Path,
    target_lab: dict[str, list[float]],
    training_data_sha256: str,
    extra: dict[str, str] | None = None,
    model_name: str = "yolov5n_mitosis",
    version: str = "1",
) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.pt"
        shutil.copy(weights, local)
        yolo = YOLO(str(local))
        exported = Path(
            yolo.export(
                format="onnx", imgsz=INPUT_SIZE_PX, dynamic=True, opset=OPSET, simplify=True, nms=False, device="cpu"
            )
        )
        names = [yolo.names[i] for i in sorted(yolo.names)]
        metadata = {
            "mitoscope.model_name": model_name,
            "mitoscope.model_version": version,
            "mitoscope.architecture": "yolov5n (ultralytics v5u, anchor-free head)",
            "mitoscope.input_size_px": str(INPUT_SIZE_PX),
            "mitoscope.mpp_um_per_px": str(MPP_UM_PER_PX),
            "mitoscope.class_names": json.dumps(names),
            "mitoscope.output_format": "yolo_cxcywh_scores",
            "mitoscope.stride_px": str(int(max(yolo.model.stride))),
            "mitoscope.reinhard_target_lab": json.dumps(target_lab),
            "mitoscope.training_data_sha256": training_data_sha256,
        }
        metadata.update({f"mitoscope.{k}": v for k, v in (extra or {}).items()})
        _prepend_uint8_nhwc(exported, out_path, metadata)


def export_frcnn(
    checkpoint: Path,
    out_path: Path,
    target_lab: dict[str, list[float]],
    extra: dict[str, str] | None = None,
    model_name: str = "faster_rcnn_mitosis",
    version: str = "1",
) -> None:
    """Export a `training.train_frcnn` checkpoint: uint8 [1, H, W, 3] in, [n, 6] boxes out."""
    import torch

    from training.frcnn_model import build_model

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    detector = build_model(state["backbone"])
    detector.load_state_dict(state["model"])
    detector.eval()

    class PerImage(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            image = images[0].permute(2, 0, 1).float() / 255.0
            found = self.inner([image])[0]
            classes = (found["labels"] - 1).float().unsqueeze(1)
            return torch.cat([found["boxes"], found["scores"].unsqueeze(1), classes], dim=1)

    dummy = torch.zeros((1, INPUT_SIZE_PX, INPUT_SIZE_PX, 3), dtype=torch.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw = out_path.with_name("raw.onnx")
    torch.onnx.export(
        PerImage(detector),
        (dummy,),
        str(raw),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        dynamo=False,
        dynamic_axes={OUTPUT_NAME: {0: "detections"}},
    )
    import onnx

    model = onnx.load(str(raw))
    raw.unlink()
    metadata = {
        "mitoscope.model_name": model_name,
        "mitoscope.model_version": version,
        "mitoscope.architecture": f"faster r-cnn ({state['backbone']}-fpn, torchvision)",
        "mitoscope.input_size_px": str(INPUT_SIZE_PX),
        "mitoscope.mpp_um_per_px": str(MPP_UM_PER_PX),
        "mitoscope.class_names": json.dumps(["mitosis"]),
        "mitoscope.output_format": "xyxy_score_class",
        "mitoscope.reinhard_target_lab": json.dumps(target_lab),
    }
    if "val_threshold" in state:  # chosen on the validation split during training
        metadata["mitoscope.score_threshold"] = f"{state['val_threshold']:.2f}"
        metadata["mitoscope.val_f1"] = f"{state['val_f1']:.4f}"
    metadata.update({f"mitoscope.{k}": v for k, v in (extra or {}).items()})
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out_path))
