"""Slide access behind one small interface: OpenSlide first, tiffslide for what it rejects.

Every OpenSlide / tiffslide call lives here, so the rest of the tiler sees only `Slide`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from services.tiler.errors import MissingMppError, SlideDimensionsError, SlideOpenError

log = logging.getLogger(__name__)

MAX_SIDE_PX = 1_000_000  # no scanner writes a level 0 wider than a metre of glass at 1 µm/px
MIN_SIDE_PX = 16
# Plausible range of microns per pixel for brightfield scanners (100x .. 2.5x).
MIN_MPP_UM_PER_PX = 0.05
MAX_MPP_UM_PER_PX = 4.0
DICOM_SUFFIX = ".dcm"
MAX_DICOM_FILES_TRIED = 8  # a series folder holds a few levels and associated images


@dataclass(frozen=True)
class SlideInfo:
    path: Path
    backend: str
    vendor: str
    width_px: int
    height_px: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_um_per_px: float | None  # from the metadata; None when the file has none


class Slide:
    """An open slide; `read_region` returns RGB uint8 with transparent areas as white."""

    def __init__(self, path: Path, handle: Any, backend: str) -> None:
        self._handle = handle
        props = handle.properties
        self.info = SlideInfo(
            path=path,
            backend=backend,
            vendor=str(props.get("openslide.vendor") or props.get("tiffslide.vendor") or "unknown"),
            width_px=int(handle.dimensions[0]),
            height_px=int(handle.dimensions[1]),
            level_dimensions=tuple((int(w), int(h)) for w, h in handle.level_dimensions),
            level_downsamples=tuple(float(d) for d in handle.level_downsamples),
            mpp_um_per_px=_read_mpp(props),
        )

    def read_region(self, x_px: int, y_px: int, level: int, width_px: int, height_px: int) -> npt.NDArray[np.uint8]:
        """Read a region whose top-left is (x_px, y_px) in level-0 pixels, size in `level` pixels."""
        try:
            region = self._handle.read_region((x_px, y_px), level, (width_px, height_px))
        except Exception as e:  # both backends raise several unrelated types on damaged data
            raise SlideOpenError(
                f"{self.info.path.name}: cannot read region at ({x_px}, {y_px}) level {level}: {e}; "
                "the file is probably truncated or damaged, re-export it from the scanner"
            ) from e
        rgba = np.asarray(region)
        return _rgba_to_rgb_on_white(rgba)

    def thumbnail(self, max_side_px: int) -> npt.NDArray[np.uint8]:
        """The whole slide scaled so its longer side is at most `max_side_px`."""
        try:
            image = self._handle.get_thumbnail((max_side_px, max_side_px))
        except Exception as e:
            raise SlideOpenError(
                f"{self.info.path.name}: cannot read the slide's overview: {e}; "
                "the file is probably truncated or damaged"
            ) from e
        array = np.asarray(image.convert("RGBA"))
        return _rgba_to_rgb_on_white(array)

    def deepzoom_tile(self, level: int, col: int, row: int, tile_px: int, overlap_px: int) -> npt.NDArray[np.uint8]:
        """One tile of the slide's DeepZoom pyramid (as slide viewers such as OpenSeadragon ask)."""
        from openslide.deepzoom import DeepZoomGenerator

        generator = DeepZoomGenerator(self._handle, tile_px, overlap_px)
        if not 0 <= level < generator.level_count:
            raise IndexError(f"no DeepZoom level {level} (0..{generator.level_count - 1})")
        cols, rows = generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise IndexError(f"no tile {col}_{row} at DeepZoom level {level} ({cols} x {rows} tiles)")
        return np.asarray(generator.get_tile(level, (col, row)).convert("RGB"))

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed `downsample` (within 1 %)."""
        best = 0
        for level, level_downsample in enumerate(self.info.level_downsamples):
            if level_downsample <= downsample * 1.01:
                best = level
        return best

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rgba_to_rgb_on_white(rgba: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Drop alpha; composite transparent pixels (outside the scanned area) onto white.

    OpenCV does the common, fully opaque case in one vectorised pass each for the check and the
    conversion, which keeps tiling close to raw `read_region` speed."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    rgba = np.ascontiguousarray(rgba)
    if cv2.minMaxLoc(cv2.extractChannel(rgba, 3))[0] == 255:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)
    return (rgb // 255).astype(np.uint8)


_OME_PHYSICAL_SIZE_X = re.compile(r'PhysicalSizeX="([0-9.eE+-]+)"')
_OME_UNITS_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}


def _ome_mpp(description: str) -> str | None:
    """PhysicalSizeX of an OME-XML description, in µm (its default unit)."""
    match = _OME_PHYSICAL_SIZE_X.search(description)
    if match is None:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', description)
    factor = _OME_UNITS_TO_UM.get(unit.group(1) if unit else "µm")
    return None if factor is None else str(float(match.group(1)) * factor)


def _is_ome(props: Any) -> bool:
    return "<OME" in str(props.get("tiff.ImageDescription") or "")


def _read_mpp(props: Any) -> float | None:
    ome = _ome_mpp(str(props.get("tiff.ImageDescription") or "")) if _is_ome(props) else None
    for raw in (props.get("openslide.mpp-x"), props.get("tiffslide.mpp-x"), props.get("aperio.MPP"), ome):
        if raw in (None, ""):
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if MIN_MPP_UM_PER_PX <= value <= MAX_MPP_UM_PER_PX:
            return value
    return None


def open_slide(path: Path) -> Slide:
    """Open with OpenSlide, else tiffslide; check dimensions and that the overview decodes.

    A folder is taken as a DICOM whole-slide image: the series' `.dcm` files side by side."""
    if path.is_dir():
        slide = _open_dicom_folder(path)
    elif not path.is_file():
        raise SlideOpenError(f"{path}: no such file")
    elif path.stat().st_size == 0:
        raise SlideOpenError(f"{path.name}: the file is empty (0 bytes)")
    else:
        slide = _open_with_backends(path)
    info = slide.info
    if not (MIN_SIDE_PX <= info.width_px <= MAX_SIDE_PX and MIN_SIDE_PX <= info.height_px <= MAX_SIDE_PX):
        slide.close()
        raise SlideDimensionsError(
            f"{path.name}: implausible dimensions {info.width_px} x {info.height_px} px "
            f"(expected {MIN_SIDE_PX}..{MAX_SIDE_PX} per side)"
        )
    return slide


def _open_with_backends(path: Path) -> Slide:
    import openslide

    errors: list[str] = []
    try:
        handle = openslide.OpenSlide(str(path))
        # OpenSlide reads OME-TIFF as a flat generic TIFF (no pyramid, no resolution).
        if not (handle.properties.get("openslide.vendor") == "generic-tiff" and _is_ome(handle.properties)):
            return Slide(path, handle, "openslide")
        handle.close()
        errors.append("OpenSlide: OME-TIFF read as a flat generic TIFF")
    except openslide.OpenSlideUnsupportedFormatError:
        errors.append("OpenSlide: unsupported format")
    except openslide.OpenSlideError as e:
        errors.append(f"OpenSlide: {e}")
    try:
        import tiffslide

        return Slide(path, tiffslide.TiffSlide(str(path)), "tiffslide")
    except Exception as e:  # tiffslide surfaces tifffile, zarr and value errors alike
        errors.append(f"tiffslide: {type(e).__name__}: {e}")
    raise SlideOpenError(
        f"{path.name}: not a whole-slide image that OpenSlide or tiffslide can read "
        f"({'; '.join(errors)}); supported: SVS, NDPI, MRXS, SCN, DICOM, tiled TIFF, OME-TIFF"
    )


def _open_dicom_folder(folder: Path) -> Slide:
    """OpenSlide (>= 4.0) opens a DICOM series from any one of its files, finding the others
    (same Series Instance UID) in the same folder; the largest file is most likely level 0."""
    import openslide

    files = sorted(
        (f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == DICOM_SUFFIX),
        key=lambda f: (-f.stat().st_size, f.name),
    )
    if not files:
        raise SlideOpenError(
            f"{folder.name}: a folder without {DICOM_SUFFIX} files; give a slide file, "
            "or the folder holding the .dcm files of one DICOM whole-slide image"
        )
    errors: list[str] = []
    for file in files[:MAX_DICOM_FILES_TRIED]:
        try:
            handle = openslide.OpenSlide(str(file))
        except openslide.OpenSlideError as e:  # also OpenSlideUnsupportedFormatError
            errors.append(f"{file.name}: {e or type(e).__name__}")
            continue
        if handle.properties.get("openslide.vendor") == "dicom":
            return Slide(folder, handle, "openslide")
        handle.close()
        errors.append(f"{file.name}: not DICOM")
    raise SlideOpenError(
        f"{folder.name}: no DICOM whole-slide image OpenSlide can read in the folder "
        f"({'; '.join(errors[:3])}); it needs the VL Whole Slide Microscopy files of one series together "
        "in one folder: re-export the slide from the scanner or the PACS"
    )


def resolve_mpp(info: SlideInfo, override_mpp_um_per_px: float | None) -> float:
    """The slide's resolution: the caller's explicit value, else the metadata, else an error."""
    if override_mpp_um_per_px is not None:
        if not MIN_MPP_UM_PER_PX <= override_mpp_um_per_px <= MAX_MPP_UM_PER_PX:
            raise MissingMppError(
                f"--mpp {override_mpp_um_per_px} is outside the plausible range "
                f"{MIN_MPP_UM_PER_PX}..{MAX_MPP_UM_PER_PX} µm/px"
            )
        return override_mpp_um_per_px
    if info.mpp_um_per_px is None:
        raise MissingMppError(
            f"{info.path.name}: the slide has no microns-per-pixel in its metadata; "
            "pass the scanner's resolution explicitly (e.g. --mpp 0.25 for 40x)"
        )
    return info.mpp_um_per_px
