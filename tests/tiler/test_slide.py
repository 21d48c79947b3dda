"""Slide access on real files: synthetic slides written here, and the shared real slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from mitoscope.slide_files import make_slide
from mitoscope.synth import SynthParams
from services.tiler.errors import MissingMppError, SlideDimensionsError, SlideOpenError
from services.tiler.slide import open_slide, resolve_mpp
from tests.conftest import shared_file


def test_synthetic_slide_opens_with_all_levels_and_mpp(small_slide: Path) -> None:
    with open_slide(small_slide) as slide:
        info = slide.info
        assert (info.backend, info.vendor) == ("openslide", "aperio")
        assert (info.width_px, info.height_px) == (2048, 1536)
        assert info.level_dimensions == ((2048, 1536), (512, 384))
        assert info.mpp_um_per_px == pytest.approx(0.25)
        region = slide.read_region(100, 200, 0, 64, 32)
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8


def test_tiler_refuses_slide_without_mpp_unless_given(tmp_path: Path) -> None:
    path = tmp_path / "no-mpp.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    with open_slide(path) as slide:
        assert slide.info.mpp_um_per_px is None
        with pytest.raises(MissingMppError, match=r"no-mpp\.tif.*--mpp"):
            resolve_mpp(slide.info, None)
        assert resolve_mpp(slide.info, 0.5) == 0.5
        with pytest.raises(MissingMppError, match="plausible"):
            resolve_mpp(slide.info, 40.0)


def test_ome_tiff_is_read_by_tiffslide_with_pyramid_and_mpp(tmp_path: Path) -> None:
    path = tmp_path / "slide.ome.tif"
    image = np.full((1024, 1024, 3), 180, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            image,
            tile=(256, 256),
            photometric="rgb",
            subifds=1,
            metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        tif.write(image[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1)
    with open_slide(path) as slide:
        assert slide.info.backend == "tiffslide"
        assert slide.info.level_dimensions == ((1024, 1024), (256, 256))
        assert slide.info.mpp_um_per_px == pytest.approx(0.5)


def test_not_a_slide_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "report.svs"
    path.write_text("this is a pathology report, not an image\n" * 100)
    with pytest.raises(SlideOpenError, match=r"report\.svs: not a whole-slide image"):
        open_slide(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(SlideOpenError, match="empty"):
        open_slide(path)


def test_truncated_slide_fails_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.svs"
    make_slide(path, SynthParams(width_px=2048, height_px=2048, seed=3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideOpenError, match=r"cut\.svs"):
        with open_slide(path) as slide:
            slide.thumbnail(256)
            for y in range(0, 2048, 512):
                for x in range(0, 2048, 512):
                    slide.read_region(x, y, 0, 512, 512)


def test_absurd_dimensions_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sliver.tif"
    tifffile.imwrite(path, np.full((8, 4096, 3), 200, np.uint8), tile=(16, 256), photometric="rgb")
    with pytest.raises(SlideDimensionsError, match="implausible dimensions"):
        open_slide(path)


@pytest.mark.shared
def test_real_aperio_slide_opens_at_20x() -> None:
    with open_slide(shared_file("slides/CMU-1-Small-Region.svs")) as slide:
        assert slide.info.vendor == "aperio"
        assert slide.info.mpp_um_per_px == pytest.approx(0.499)
        assert slide.read_region(1000, 1000, 0, 256, 256).mean() < 250  # tissue, not glass


@pytest.mark.shared
def test_real_ndpi_slide_opens_with_its_levels() -> None:
    with open_slide(shared_file("slides/test3-DAPI-2-387.ndpi")) as slide:
        assert slide.info.vendor == "hamamatsu"
        assert len(slide.info.level_dimensions) == 7
        assert slide.info.mpp_um_per_px == pytest.approx(0.228, abs=0.001)


def test_region_beyond_the_slide_edge_is_white(small_slide: Path) -> None:
    with open_slide(small_slide) as slide:
        region = slide.read_region(2048 - 32, 0, 0, 64, 64)
        assert (region[:, 32:] == 255).all()
        assert region.shape == (64, 64, 3)
