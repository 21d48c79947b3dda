"""The second stage's network and what surrounds it: training views, prediction, ONNX export.

The network sees an 80 px crop at 0.25 µm/px (20 µm, a whole figure with some context); a
stride-2 stem makes it look at 0.5 µm/px, which also makes 20x scans look like 40x ones. Served
probabilities average four views of each crop, and so do the thresholds chosen on validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

CROP_PX = 80
MAX_SHIFT_PX = 8  # positives' centres are known to a few px; detector boxes are off by as much
OUTPUT_FORMAT = "mitosis_atypical_probabilities"
SCANNED_AT_20X_FRACTION = 0.5


def augment(sample: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """One training view: shift, rotation/flip, 20x simulation, blur, JPEG, colour, mirrored edge."""
    size = sample.shape[0]
    margin = (size - CROP_PX) // 2
    dx, dy = rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, size=2)
    x0, y0 = margin + int(dx), margin + int(dy)
    crop = np.ascontiguousarray(np.rot90(sample[y0 : y0 + CROP_PX, x0 : x0 + CROP_PX], int(rng.integers(4))))
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
    # Half of every class looks like a 20x (0.5 µm/px) scan resampled to 0.25 µm/px, so that looking
    # like 20x says nothing about the label (stored 20x positives once taught "blurry dark blob").
    if rng.random() < SCANNED_AT_20X_FRACTION:
        factor = rng.uniform(1.6, 2.4)
        small = max(8, round(CROP_PX / factor))
        crop = cv2.resize(cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA), (CROP_PX, CROP_PX))
    if rng.random() < 0.25:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.4, 1.4))
    if rng.random() < 0.3:
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 92))])
        crop = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else crop
    if rng.random() < 0.8:  # residual stain variation after Reinhard
        gain = rng.uniform(0.88, 1.12, size=3) * rng.uniform(0.9, 1.1)
        bias = rng.uniform(-14, 14, size=3)
        crop = np.clip(crop.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    if rng.random() < 0.15:  # as near a slide or crop edge: mirrored beyond a line
        depth = int(rng.integers(4, 30))
        crop = np.ascontiguousarray(np.rot90(crop, int(rng.integers(4))))
        crop[:depth] = crop[2 * depth - 1 : depth - 1 : -1][:depth]
    return crop


def build_network() -> Any:
    import torch
    from torch import nn

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    class CropNet(nn.Module):
        """uint8 NHWC crops in, two logits out: mitosis, atypical (the latter read only for mitoses)."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(inplace=True),
                block(16, 32),
                nn.MaxPool2d(2),
                block(32, 64),
                nn.MaxPool2d(2),
                block(64, 128),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Dropout(0.2),
            )
            self.head = nn.Linear(128, 2)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float() / 255.0
            return self.head(self.features(x))

    return CropNet()


def centre_crop(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    m = (images.shape[1] - CROP_PX) // 2
    return np.ascontiguousarray(images[:, m : m + CROP_PX, m : m + CROP_PX])


def with_views(net: Any) -> Any:
    """`net` answering probabilities averaged over four views of each crop (as it is, mirrored,
    flipped, both): a figure has no orientation, and one view's noise should not decide a call.
    The thresholds are chosen with, and the ONNX graph exported with, exactly this."""
    import torch

    class FourViews(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:  # uint8 NHWC
            n = images.shape[0]
            views = torch.cat([images, images.flip(2), images.flip(1), images.flip(1).flip(2)])  # one batch
            logits = self.inner(views).reshape(4, n, -1).mean(dim=0)
            return torch.sigmoid(logits)

    return FourViews(net).eval()


def predict(model: Any, images: npt.NDArray[np.uint8], batch: int = 512) -> npt.NDArray[np.float32]:
    """Probabilities (n, 2) for the centre crops, as the exported model answers them."""
    import torch

    served = with_views(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(served(torch.from_numpy(centre_crop(images[i : i + batch]))).numpy())
    return np.concatenate(out).astype(np.float32)


def export_onnx(model: Any, path: Path, metadata: dict[str, str]) -> None:
    import torch

    from training.onnx_export import set_metadata

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.onnx")
    torch.onnx.export(
        with_views(model),
        (torch.zeros((1, CROP_PX, CROP_PX, 3), dtype=torch.uint8),),
        str(partial),
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    set_metadata(partial, {f"mitoscope.{key}": value for key, value in metadata.items()})
    partial.rename(path)
