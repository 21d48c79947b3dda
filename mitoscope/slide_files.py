"""Painted images to slide files: an Aperio-style pyramidal TIFF (levels as consecutive tiled JPEG
pages, MPP in the description, which OpenSlide opens with all its levels) and the truth beside it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from mitoscope.synth import SynthParams, synthesize

SLIDE_TILE_PX = 256
LEVEL_DOWNSAMPLE = 4
SMALLEST_LEVEL_PX = 512


def _aperio_description(width: int, height: int, mpp: float, level_size: tuple[int, int]) -> str:
    mag = round(10.0 / mpp)
    return (
        f"Aperio Image Library mitoscope-synth\r\n{width}x{height} [0,0 {width}x{height}] "
        f"({SLIDE_TILE_PX}x{SLIDE_TILE_PX}) -> {level_size[0]}x{level_size[1]} JPEG/RGB Q=85"
        f"|AppMag = {mag}|MPP = {mpp}|Filename = synthetic"
    )


def write_slide(path: Path, rgb: npt.NDArray[np.uint8], mpp_um_per_px: float) -> None:
    """Write an Aperio-style pyramidal TIFF: each level a tiled JPEG page (OpenSlide reads it)."""
    import tifffile

    h, w = rgb.shape[:2]
    levels = [rgb]
    while max(levels[-1].shape[:2]) > SMALLEST_LEVEL_PX * LEVEL_DOWNSAMPLE // 2:
        prev = levels[-1]
        size = (max(prev.shape[1] // LEVEL_DOWNSAMPLE, 1), max(prev.shape[0] // LEVEL_DOWNSAMPLE, 1))
        levels.append(cv2.resize(prev, size, interpolation=cv2.INTER_AREA))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tif:
        for level in levels:
            tif.write(
                level,
                tile=(SLIDE_TILE_PX, SLIDE_TILE_PX),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                description=_aperio_description(w, h, mpp_um_per_px, (level.shape[1], level.shape[0])),
                metadata=None,
            )
    tmp.replace(path)


def make_slide(path: Path, params: SynthParams) -> Path:
    """Synthesise and write a slide plus `<slide>.truth.json`; returns the truth path."""
    image = synthesize(params)
    write_slide(path, image.rgb, params.mpp_um_per_px)
    truth_path = truth_path_for(path)
    truth_path.write_text(json.dumps(image.truth(), indent=1))
    return truth_path


def truth_path_for(slide_path: Path) -> Path:
    return slide_path.with_name(slide_path.name + ".truth.json")
