"""`mitoscope score`: one slide in this process (or on Triton), with a progress bar and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mitoscope.cli.console import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, fail, print_summary, progress_bar, show_tiles
from mitoscope.cli.options import DEFAULT_TRITON_URL, BackendChoice, cache_dir, model_repository
from services.common.options import DEFAULT_BATCH_SIZE, DEFAULT_FIELD_DIAMETER_MM, DEFAULT_MODEL_NAME
from services.detector.model import DEFAULT_CLASSIFIER_NAME

if TYPE_CHECKING:
    from services.common.options import ScoreOptions
    from services.detector.detector import Detector


def score(
    slide: Annotated[str, typer.Argument(help="Slide file (SVS, NDPI, MRXS, SCN, DICOM, TIFF) or s3://bucket/key.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder [default: <slide>.mitoscope/ next to the slide].")
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="Model name in the model repository (yolov5n_mitosis, faster_rcnn_mitosis), 'ensemble' "
            "(both, weighted box fusion), or a path to an .onnx file."
        ),
    ] = DEFAULT_MODEL_NAME,
    classifier: Annotated[
        str,
        typer.Option(
            help="Second stage that confirms each candidate and calls it atypical or normal: a model name, "
            "an .onnx path, or 'none' for the detector alone."
        ),
    ] = DEFAULT_CLASSIFIER_NAME,
    backend: Annotated[
        BackendChoice, typer.Option(help="Run the model in this process or on a Triton server.")
    ] = BackendChoice.onnxruntime,
    triton_url: Annotated[str, typer.Option(help="Triton gRPC address (host:port).")] = DEFAULT_TRITON_URL,
    mpp: Annotated[
        float | None,
        typer.Option(help="Microns per pixel of level 0, for slides whose metadata lacks it (0.25 = 40x)."),
    ] = None,
    field_diameter_mm: Annotated[
        float, typer.Option(help="Microscope field diameter for the Nottingham table (mm).")
    ] = DEFAULT_FIELD_DIAMETER_MM,
    score_threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Minimum detection confidence [default: the model's validated one]."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles per batch.")] = DEFAULT_BATCH_SIZE,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime threads (0 = all cores).")] = 0,
    gallery: Annotated[
        bool, typer.Option(help="Also write gallery.png: a crop of each detection with its box.")
    ] = False,
) -> None:
    """Score one slide: count mitoses, find the 10-HPF hotspot, give the mitotic score.

    Writes result.json, result.geojson (QuPath), result.csv and overview.png.
    """
    from services.common.errors import PermanentError, TransientError
    from services.common.options import ScoreOptions
    from services.detector.detector import open_detector
    from services.tiler.storage import SlideCache, is_s3_uri, resolve_slide

    options = ScoreOptions(
        mpp_override_um_per_px=mpp,
        batch_size=batch_size,
        score_threshold=score_threshold,
        field_diameter_mm=field_diameter_mm,
        gallery=gallery,
    )
    detector: Detector | None = None
    try:
        local = resolve_slide(slide, SlideCache(cache_dir()) if is_s3_uri(slide) else None)
        name = slide.rstrip("/").rsplit("/", 1)[-1]  # a DICOM folder may come with a trailing slash
        out_dir = out or (Path(f"{name}.mitoscope") if is_s3_uri(slide) else local.with_name(f"{name}.mitoscope"))
        detector = open_detector(model, backend.value, model_repository(), triton_url, threads, classifier)
        result = score_with_progress(local, out_dir, detector, options, name)
    except TransientError as e:  # the object store or the inference server: try again later
        raise fail(str(e), EXIT_UNAVAILABLE) from None
    except PermanentError as e:  # the slide, the model or a parameter
        raise fail(str(e), EXIT_BAD_INPUT) from None
    finally:
        if detector is not None:
            detector.close()
    print_summary(result, out_dir)


def score_with_progress(
    slide: Path, out_dir: Path, detector: Detector, options: ScoreOptions, name: str
) -> dict[str, Any]:
    """`score_slide` with a progress bar on the console."""
    from mitoscope.pipeline import score_slide

    # The bar appears once the slide is open and its tiles are planned, so a refused slide
    # prints only its error line.
    bar = progress_bar()
    task = bar.add_task(f"scoring {name}", total=None, rate="")
    try:
        return score_slide(
            slide, out_dir, detector, options, lambda done, total: show_tiles(bar, task, done, total), display_name=name
        )
    finally:
        bar.stop()
