"""The Faster R-CNN the recipe trains and the export rebuilds: one definition for both."""

from __future__ import annotations

from typing import Any

TILE_PX = 512  # the detector's input: Reinhard-normalised 512 px tiles at 0.25 µm/px


def build_model(backbone: str, num_classes: int = 2) -> Any:
    import torch
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    fpn = resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=torch.nn.BatchNorm2d, trainable_layers=5)
    # Inputs arrive Reinhard-normalised in 0..1; pin the transform to 512 px so nothing is resized.
    return FasterRCNN(
        fpn,
        num_classes=num_classes,
        min_size=TILE_PX,
        max_size=TILE_PX,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        box_detections_per_img=100,
    )
