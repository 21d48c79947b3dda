"""Slide QC: refusals of slides that are not brightfield H&E, and pen / blur tiles left unscored.

Test slides are one synthetic H&E image, altered the way real slides go wrong, written as
pyramidal TIFFs at 0.25 µm/px and planned with the model's grid (512 px, 96 px overlap).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from mitoscope.slide_files import write_slide
from mitoscope.synth import SynthParams, synthesize
from services.tiler import planning
from services.tiler.errors import (
    ImplausibleColoursError,
    NotBrightfieldError,
    NotHematoxylinEosinError,
    NoTissueError,
    SlideError,
    SlideOpenError,
    SlideQcError,
)
from services.tiler.exclusions import focus_measure
from services.tiler.planning import SlidePlan, plan_slide
from services.tiler.qc import FOCUS_MIN_LAPLACIAN_VAR, check_colours
from services.tiler.slide import open_slide
from tests.conftest import shared_file

MPP_UM_PER_PX = 0.25
SIDE_PX = 2048
TILE_PX = 512
OVERLAP_PX = 96
STRIDE_PX = TILE_PX - OVERLAP_PX

Image = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def he_rgb() -> Image:
    return synthesize(SynthParams(width_px=SIDE_PX, height_px=SIDE_PX, seed=11, tissue_fraction=0.6)).rgb


def _plan(tmp_path: Path, name: str, rgb: Image) -> SlidePlan:
    path = tmp_path / name
    write_slide(path, rgb, MPP_UM_PER_PX)
    with open_slide(path) as slide:
        return plan_slide(slide, MPP_UM_PER_PX, MPP_UM_PER_PX, TILE_PX, OVERLAP_PX)


def _as_fluorescence(rgb: Image) -> Image:
    """Dark background, nuclei glowing blue: what a DAPI channel rendered as RGB looks like."""
    signal = 255.0 - cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.clip(signal[..., None] * np.array([0.1, 0.15, 1.0]), 0, 255).astype(np.uint8)


def _as_dab(rgb: Image) -> Image:
    """Re-stain H&E as IHC: colour deconvolution (Ruifrok-Johnston vectors), eosin's share
    re-rendered as DAB brown and hematoxylin kept as a lighter counterstain."""
    hematoxylin, eosin, dab = (
        np.array(v) / np.linalg.norm(v) for v in ([0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78])
    )
    optical_density = -np.log(np.maximum(rgb.reshape(-1, 3).astype(np.float64), 1.0) / 255.0)
    amounts = optical_density @ np.linalg.pinv(np.stack([hematoxylin, eosin]))
    restained = np.clip(amounts[:, :1], 0, None) * 0.5 * hematoxylin + np.clip(amounts[:, 1:], 0, None) * 1.5 * dab
    return np.clip(255.0 * np.exp(-restained), 0, 255).astype(np.uint8).reshape(rgb.shape)


def _write_dicom_series(folder: Path, rgb: Image, photometric: str) -> None:
    """A DICOM WSI series as a scanner exports it: one file per level, 256 px JPEG frames.

    OpenCV writes JFIF JPEGs, which hold YCbCr: "YBR_FULL_422" is the honest header, "RGB" the
    fault seen in the field (OpenSlide then shows Y, Cb, Cr as R, G, B)."""
    pytest.importorskip("pydicom", reason="pydicom writes the DICOM test series")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    wsi_class, tile_px = "1.2.840.10008.5.1.4.1.1.77.1.6", 256
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    levels = [rgb, cv2.resize(rgb, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)]
    for i, level in enumerate(levels):
        height, width = level.shape[:2]
        frames = []
        for y in range(0, height, tile_px):
            for x in range(0, width, tile_px):
                frame = np.full((tile_px, tile_px, 3), 255, np.uint8)
                part = level[y : y + tile_px, x : x + tile_px]
                frame[: part.shape[0], : part.shape[1]] = part
                frames.append(cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes())
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = wsi_class, generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = wsi_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "SM"
        ds.ImageType = (
            ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if i == 0 else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        )
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.Rows, ds.Columns, ds.NumberOfFrames = tile_px, tile_px, len(frames)
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = width, height, 1
        ds.DimensionOrganizationType = "TILED_FULL"
        measures = Dataset()
        measures.PixelSpacing = [MPP_UM_PER_PX * 4**i / 1000.0] * 2  # mm
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"level-{i}.dcm", enforce_file_format=True)


def _tile_indices_are_positions(plan: SlidePlan) -> bool:
    return [t.index for t in plan.plan.tiles] == list(range(len(plan.plan.tiles)))


def test_ordinary_synthetic_slide_passes_with_nothing_excluded(tmp_path: Path, he_rgb: Image) -> None:
    planned = _plan(tmp_path, "he.svs", he_rgb)
    qc = planned.qc
    assert qc.excluded_tiles == () and qc.excluded_area_mm2 == 0.0
    assert qc.focus.tiles_judged >= 0.8 * len(planned.plan.tiles)
    assert qc.focus.laplacian_var_min is not None and qc.focus.laplacian_var_min > 2 * FOCUS_MIN_LAPLACIAN_VAR
    assert _tile_indices_are_positions(planned)
    assert planned.plan.tissue_area_mm2 == pytest.approx(planned.tissue.area_mm2)
    report = json.loads(json.dumps(qc.to_dict()))
    assert report["verdict"] == "ok" and report["excluded"] == [] and report["excluded_area_mm2"] == 0.0
    assert report["checks"]["glass_chroma"] < 5 and report["checks"]["pink_purple_fraction"] > 0.9


def test_fluorescence_slide_is_refused_as_not_brightfield(tmp_path: Path, he_rgb: Image) -> None:
    with pytest.raises(NotBrightfieldError, match=r"dapi\.svs: the background is dark.*fluorescence") as caught:
        _plan(tmp_path, "dapi.svs", _as_fluorescence(he_rgb))
    assert caught.value.code == "not_brightfield"


def test_dark_slide_is_refused_even_when_unscanned_areas_come_back_white() -> None:
    # MRXS-like: the scanned field is black, the rest transparent (composited onto white).
    overview = np.full((200, 200, 3), 255, np.uint8)
    overview[20:180, 20:180] = (5, 5, 20)
    with pytest.raises(NotBrightfieldError, match=r"scan\.tif"):
        check_colours(overview, "scan.tif")


def test_dab_brown_slide_is_refused_as_not_he(tmp_path: Path, he_rgb: Image) -> None:
    with pytest.raises(NotHematoxylinEosinError, match=r"ihc\.svs: .* brown.*immunohistochemistry") as caught:
        _plan(tmp_path, "ihc.svs", _as_dab(he_rgb))
    assert caught.value.code == "not_he"


def test_ycbcr_frames_read_as_rgb_are_refused_as_implausible_colours(tmp_path: Path, he_rgb: Image) -> None:
    # The DICOM fault: JPEG frames hold YCbCr, the header says RGB, so Y, Cr, Cb land in R, G, B.
    shifted = cv2.cvtColor(he_rgb, cv2.COLOR_RGB2YCrCb)
    with pytest.raises(ImplausibleColoursError, match=r"shifted\.svs: the glass is not near-white") as caught:
        _plan(tmp_path, "shifted.svs", shifted)
    assert caught.value.code == "implausible_colours"


def test_blurred_region_is_excluded_and_reported(tmp_path: Path, he_rgb: Image) -> None:
    sharp = _plan(tmp_path, "sharp.svs", he_rgb)
    blurred_to_px = STRIDE_PX + TILE_PX  # tile columns 0 and 1 lie wholly inside
    rgb = he_rgb.copy()
    rgb[:, :blurred_to_px] = cv2.GaussianBlur(he_rgb, (0, 0), 3.0 / MPP_UM_PER_PX)[:, :blurred_to_px]  # σ 3 µm
    planned = _plan(tmp_path, "blurred.svs", rgb)
    qc = planned.qc
    blur = qc.tiles_excluded_for("blur")
    assert not qc.tiles_excluded_for("pen")
    assert {(t.row, t.col) for t in blur} == {(t.row, t.col) for t in sharp.plan.tiles if t.col < 2}
    assert {(t.row, t.col) for t in planned.plan.tiles} == {(t.row, t.col) for t in sharp.plan.tiles if t.col >= 2}
    assert _tile_indices_are_positions(planned)
    # Every mm² is accounted for: scored + excluded = what the sharp slide scores (tissue edges blur a little).
    assert qc.blur_area_mm2 > 0.02
    assert planned.plan.tissue_area_mm2 + qc.excluded_area_mm2 == pytest.approx(sharp.plan.tissue_area_mm2, rel=0.05)
    assert planned.plan.tissue_area_mm2 == pytest.approx(planned.tissue.area_mm2)
    report = qc.to_dict()
    assert report["excluded"] == [
        {
            "reason": "blur",
            "area_mm2": round(qc.blur_area_mm2, 4),
            "tiles": len(blur),
            "tile_rows_cols": [[t.row, t.col] for t in blur],
            "boxes_level0_px": [[round(v, 1) for v in t.box_level0_px] for t in blur],
        }
    ]
    scale = planned.plan.level0_px_per_tile_px
    assert blur[0].box_level0_px[:2] == (blur[0].x_px * scale, blur[0].y_px * scale)
    assert report["excluded_area_mm2"] == pytest.approx(qc.blur_area_mm2, abs=1e-4)


def test_slide_entirely_out_of_focus_is_refused_as_no_tissue(tmp_path: Path, he_rgb: Image) -> None:
    with pytest.raises(NoTissueError, match=r"no tissue left to score: \d+ tiles out of focus") as caught:
        _plan(tmp_path, "fog.svs", cv2.GaussianBlur(he_rgb, (0, 0), 3.0 / MPP_UM_PER_PX))
    assert caught.value.code == "no_tissue"


@pytest.mark.parametrize(
    ("ink", "ink_rgb"), [("green", (40, 150, 80)), ("blue", (40, 60, 175)), ("black", (25, 25, 30))]
)
def test_pen_stroke_is_excluded_and_reported(
    tmp_path: Path, he_rgb: Image, ink: str, ink_rgb: tuple[int, int, int]
) -> None:
    x0_px, x1_px = (
        900,
        1300,
    )  # a 100 µm band down the slide: it covers 78 % of tile column 2 (832..1344), under half of 1 and 3
    rgb = he_rgb.copy()
    # Ink filters the light like a stain: multiply, so tissue under it shows darker.
    band = rgb[:, x0_px:x1_px].astype(np.float32) * (np.array(ink_rgb, np.float32) / 255.0)
    rgb[:, x0_px:x1_px] = band.astype(np.uint8)
    planned = _plan(tmp_path, f"pen-{ink}.svs", rgb)
    qc = planned.qc
    pen = qc.tiles_excluded_for("pen")
    assert {(t.row, t.col) for t in pen} >= {(row, 2) for row in range(planned.plan.rows)}
    assert {t.col for t in pen} <= {1, 2, 3}  # beside column 2 only tiles with ink and no tissue
    assert not qc.tiles_excluded_for("blur")
    assert 2 not in {t.col for t in planned.plan.tiles}
    assert _tile_indices_are_positions(planned)
    mask = planned.tissue.mask
    per_mask_px = planned.tissue.level0_px_per_mask_px
    assert not mask[:, round(x0_px / per_mask_px) : round(x1_px / per_mask_px)].any()  # ink is not tissue
    band_mm2 = (x1_px - x0_px) * SIDE_PX * (MPP_UM_PER_PX / 1000.0) ** 2
    assert band_mm2 < qc.pen_area_mm2 < 2.5 * band_mm2  # the band, its margin and tissue only col 2 covered
    excluded = qc.to_dict()["excluded"]
    assert isinstance(excluded, list) and len(excluded) == 1
    assert excluded[0]["reason"] == "pen" and excluded[0]["tiles"] == len(pen)


def test_qc_errors_are_slide_errors_with_distinct_codes() -> None:
    classes = (NotBrightfieldError, NotHematoxylinEosinError, ImplausibleColoursError, NoTissueError)
    assert all(issubclass(c, SlideQcError) and issubclass(c, SlideError) for c in classes)
    assert sorted(c.code for c in classes) == ["implausible_colours", "no_tissue", "not_brightfield", "not_he"]
    assert planning.NoTissueError is NoTissueError  # other modules import it from planning


def test_glass_only_tile_is_not_judged_for_focus() -> None:
    assert focus_measure(np.full((64, 64, 3), 242, np.uint8)) is None


def test_dicom_folder_opens_as_one_slide_and_passes_qc(tmp_path: Path, he_rgb: Image) -> None:
    _write_dicom_series(tmp_path / "case-17", he_rgb, "YBR_FULL_422")
    with open_slide(tmp_path / "case-17") as slide:
        assert (slide.info.vendor, slide.info.path.name) == ("dicom", "case-17")
        assert slide.info.level_dimensions == ((SIDE_PX, SIDE_PX), (SIDE_PX // 4, SIDE_PX // 4))
        assert slide.info.mpp_um_per_px == pytest.approx(MPP_UM_PER_PX)
        planned = plan_slide(slide, MPP_UM_PER_PX, MPP_UM_PER_PX, TILE_PX, OVERLAP_PX)
    assert planned.plan.tiles and planned.qc.excluded_tiles == ()


def test_dicom_with_ycbcr_frames_labelled_rgb_is_refused_as_implausible_colours(tmp_path: Path, he_rgb: Image) -> None:
    _write_dicom_series(tmp_path / "case-18", he_rgb, "RGB")
    with open_slide(tmp_path / "case-18") as slide:
        with pytest.raises(ImplausibleColoursError, match=r"case-18: the glass is not near-white.*YCbCr"):
            plan_slide(slide, MPP_UM_PER_PX, MPP_UM_PER_PX, TILE_PX, OVERLAP_PX)


def test_folder_without_a_dicom_slide_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideOpenError, match=r"empty: a folder without \.dcm files"):
        open_slide(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "report.dcm").write_text("not DICOM at all\n" * 50)
    with pytest.raises(SlideOpenError, match=r"notes: no DICOM whole-slide image .*report\.dcm"):
        open_slide(tmp_path / "notes")


@pytest.mark.shared
def test_real_he_slide_passes_qc_with_nothing_excluded() -> None:
    with open_slide(shared_file("slides/CMU-1-Small-Region.svs")) as slide:
        planned = plan_slide(slide, slide.info.mpp_um_per_px or 0.499, 0.25, TILE_PX, OVERLAP_PX)
    qc = planned.qc
    assert qc.excluded_tiles == ()
    assert qc.colours.glass_lightness > 90 and qc.colours.glass_chroma < 5
    assert qc.stain.pink_purple_fraction > 0.9
    assert qc.focus.laplacian_var_min is not None and qc.focus.laplacian_var_min > 10 * FOCUS_MIN_LAPLACIAN_VAR


@pytest.mark.shared
def test_real_fluorescence_slide_is_refused_as_not_brightfield() -> None:
    with open_slide(shared_file("slides/test3-DAPI-2-387.ndpi")) as slide:
        with pytest.raises(NotBrightfieldError, match=r"test3-DAPI-2-387\.ndpi: the background is dark"):
            plan_slide(slide, slide.info.mpp_um_per_px or 0.228, 0.25, TILE_PX, OVERLAP_PX)


def test_glass_clipped_to_pure_white_is_plausible(he_rgb: Image) -> None:
    """Scanners that correct the background store glass as exactly (255, 255, 255)."""
    clipped = he_rgb.copy()
    glass = cv2.cvtColor(he_rgb, cv2.COLOR_RGB2GRAY) > 225
    clipped[glass] = 255
    measures = check_colours(cv2.resize(clipped, (512, 512), interpolation=cv2.INTER_AREA), "clipped.svs")
    assert measures.glass_lightness > 95 and measures.glass_chroma < 3
