"""`mitoscope demo`: a synthetic slide scored through the local stack over REST, against its truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mitoscope.cli.console import EXIT_UNAVAILABLE, console, fail, print_summary, progress_bar, show_tiles
from mitoscope.cli.options import model_repository


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo slide and its results.")] = Path("out/demo"),
    shared: Annotated[
        Path, typer.Option(help="The shared data folder; its CMU-1 slide is scored too when present.")
    ] = Path("../shared"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic slide.")] = 7,
    size: Annotated[int, typer.Option(min=2048, max=32768, help="Side of the synthetic slide in pixels.")] = 12288,
) -> None:
    """Synthesise a slide and score it through the local stack over REST; compare with the planted truth.

    Starts Triton, the four services and the gateway on 127.0.0.1 (as `mitoscope up`), uploads
    each slide to the gateway, follows the job's progress, downloads the exports and stops the
    stack. Scores in-process with ONNX Runtime, saying so, when the stack cannot start.
    """
    from mitoscope.slide_files import make_slide, truth_path_for
    from mitoscope.stack import Stack, StackError
    from mitoscope.synth import SynthParams
    from services.common.files import REPO_ROOT

    slide = out / "synthetic.svs"
    if not truth_path_for(slide).exists():
        with console.status(f"painting a synthetic {size} x {size} px slide (seed {seed})"):
            make_slide(slide, SynthParams(width_px=size, height_px=size, seed=seed))
    slides = [slide]
    cmu = shared / "slides" / "CMU-1-Small-Region.svs"
    if cmu.is_file():
        slides.append(cmu)
    if not (model_repository() / "faster_rcnn_mitosis" / "1" / "model.onnx").is_file():
        console.print(
            "faster_rcnn_mitosis is not built (its 113 MB weights are not in git; `make models` "
            "trains it): scoring with yolov5n_mitosis"
        )
    stack = Stack(REPO_ROOT, (out / "stack" / "slides").resolve(), (out / "stack").resolve())
    stack.down()  # a stack left by an interrupted demo
    try:
        with console.status("starting Triton, tiler, preprocess, detector, aggregator and gateway on 127.0.0.1"):
            urls = stack.up()
    except StackError as e:
        console.print(f"[yellow]the local stack did not start ({e}); scoring in-process with ONNX Runtime[/]")
        _demo_in_process(slides, out)
        return
    console.print(f"gateway {urls['gateway']} (API docs at /docs), Triton gRPC {urls['triton_grpc']}")
    try:
        for path in slides:
            out_dir = out / f"{path.name}.mitoscope"
            result, seconds = score_over_rest(urls["gateway"], path, out_dir)
            print_summary(result, out_dir, seconds)
            _compare_with_truth(path, result)
    finally:
        with console.status("stopping the stack"):
            stack.down()


def score_over_rest(gateway: str, path: Path, out_dir: Path) -> tuple[dict[str, Any], float]:
    """Score one slide through the gateway with a progress bar; returns its result and the wall time.

    Any failure (the gateway unreachable, a refusal, a failed job) is one error line and exit code 3."""
    from mitoscope.client import GatewayClient, GatewayError, JobFailedError

    uploading = console.status(f"uploading {path.name}")
    bar = progress_bar()
    task = bar.add_task(f"scoring {path.name}", total=None, rate="")

    def on_progress(job: dict[str, Any]) -> None:
        uploading.stop()  # the job's first event: the upload is done
        if job["tiles_total"]:
            show_tiles(bar, task, job["tiles_done"], job["tiles_total"])

    started = time.perf_counter()
    uploading.start()
    try:
        with GatewayClient(gateway) as client:
            result = client.score(path, out_dir, on_progress=on_progress)
    except JobFailedError as e:
        raise fail(f"{path.name}: {e}", EXIT_UNAVAILABLE) from None
    except GatewayError as e:
        raise fail(str(e), EXIT_UNAVAILABLE) from None
    finally:
        uploading.stop()
        bar.stop()
    return result, time.perf_counter() - started


def _compare_with_truth(path: Path, result: dict[str, Any]) -> None:
    import json

    from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, match_points
    from mitoscope.slide_files import truth_path_for

    truth_path = truth_path_for(path)
    if truth_path.exists():
        truth = json.loads(truth_path.read_text())
        counts = match_points(
            ((d["x_px"], d["y_px"], d["score"]) for d in result["detections"]),
            ((m["x_px"], m["y_px"]) for m in truth["mitoses"]),
            MIDOG_MATCH_RADIUS_UM / truth["mpp_um_per_px"],
        )
        print(
            f"against the planted truth ({truth['mitosis_count']} mitoses, 7.5 µm match): "
            f"recall {counts.recall:.2f}, precision {counts.precision:.2f}, F1 {counts.f1:.2f}"
        )
    else:
        console.print(
            "[yellow]no ground truth for this slide: the count is unverified; the shipped model "
            "over-calls dark stromal nuclei on real slides (README, 'The shipped model')[/]"
        )
    print()


def _demo_in_process(slides: list[Path], out: Path) -> None:
    from mitoscope.cli.score import score_with_progress
    from services.common.options import ScoreOptions
    from services.detector.detector import open_detector
    from services.detector.model import DEFAULT_MODEL_NAME

    detector = open_detector(DEFAULT_MODEL_NAME, "onnxruntime", model_repository(), "")
    try:
        for path in slides:
            out_dir = out / f"{path.name}.mitoscope"
            result = score_with_progress(path, out_dir, detector, ScoreOptions(), path.name)
            print_summary(result, out_dir)
            _compare_with_truth(path, result)
    finally:
        detector.close()
