"""`mitoscope`: score slides for mitoses, make synthetic slides.

Exit codes: 0 success, 2 bad input (slide, model, parameter), 3 a dependency is unavailable
(object store, inference server).
"""

from __future__ import annotations

import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mitoscope import __version__
from mitoscope.pipeline import ScoreOptions
from services.detector.detector import DEFAULT_CLASSIFIER_NAME, Detector

app = typer.Typer(
    help="mitoscope: count mitoses on breast-cancer H&E whole-slide images and give the "
    "Nottingham mitotic score, with every detection shown where it was found.\n\n"
    "Start with `mitoscope synth demo.svs` then `mitoscope score demo.svs`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
DEFAULT_TRITON_URL = "127.0.0.1:8001"


class BackendChoice(StrEnum):
    onnxruntime = "onnxruntime"
    triton = "triton"


def _model_repository() -> Path:
    from mitoscope.pipeline import REPO_ROOT

    return Path(os.environ.get("MITOSCOPE_MODEL_REPOSITORY", REPO_ROOT / "model_repository"))


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        print(f"mitoscope {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Retries are reported by our own error message; urllib3's per-retry warnings are noise.
    logging.getLogger("urllib3").setLevel(logging.INFO if verbose else logging.ERROR)


@app.command()
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
    ] = "yolov5n_mitosis",
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
    ] = 0.55,
    score_threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Minimum detection confidence [default: the model's validated one]."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles per batch.")] = 150,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime threads (0 = all cores).")] = 0,
    gallery: Annotated[
        bool, typer.Option(help="Also write gallery.png: a crop of each detection with its box.")
    ] = False,
) -> None:
    """Score one slide: count mitoses, find the 10-HPF hotspot, give the mitotic score.

    Writes result.json, result.geojson (QuPath), result.csv and overview.png.
    """
    from services.aggregator.errors import AggregatorError
    from services.detector.detector import open_detector
    from services.detector.errors import DetectorError, InferenceServerError
    from services.preprocess.errors import PreprocessError
    from services.tiler.errors import StorageUnavailableError, TilerError
    from services.tiler.storage import SlideCache, is_s3_uri, resolve_slide

    cache_root = _cache_dir()
    options = ScoreOptions(
        mpp_override_um_per_px=mpp,
        batch_size=batch_size,
        score_threshold=score_threshold,
        field_diameter_mm=field_diameter_mm,
        gallery=gallery,
    )
    detector: Detector | None = None
    try:
        local = resolve_slide(slide, SlideCache(cache_root) if is_s3_uri(slide) else None)
        name = slide.rsplit("/", 1)[-1]
        out_dir = out or (Path(f"{name}.mitoscope") if is_s3_uri(slide) else local.with_name(f"{name}.mitoscope"))
        detector = open_detector(model, backend.value, _model_repository(), triton_url, threads, classifier)
        result = _score_with_progress(local, out_dir, detector, options, name)
    except (StorageUnavailableError, InferenceServerError) as e:
        raise _fail(str(e), EXIT_UNAVAILABLE) from None
    except (TilerError, DetectorError, PreprocessError, AggregatorError) as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    finally:
        if detector is not None:
            detector.close()
    _print_summary(result, out_dir)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def _score_with_progress(slide: Path, out_dir: Path, detector: Detector, options: ScoreOptions, name: str) -> dict:  # type: ignore[type-arg]
    from mitoscope.pipeline import score_slide

    # The bar appears once the slide is open and its tiles are planned, so a refused slide
    # prints only its error line.
    bar = _progress_bar()
    task = bar.add_task(f"scoring {name}", total=None, rate="")

    def on_progress(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        elapsed = bar.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:.1f} tiles/s" if elapsed > 0 and done else ""
        bar.update(task, completed=done, total=total, rate=rate)

    try:
        return score_slide(slide, out_dir, detector, options, on_progress, display_name=name)
    finally:
        bar.stop()


def _print_summary(result: dict, out_dir: Path, seconds: float | None = None) -> None:  # type: ignore[type-arg]
    """The result as a table; `seconds` is the wall time seen by a REST caller (uploads included)."""
    hotspot = result["hotspot"]
    prov = result["provenance"]
    table = Table(title=f"mitoscope: {result['slide']['name']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("mitoses (whole slide)", str(result["mitosis_count"]))
    table.add_row("tissue area", f"{result['tissue_area_mm2']:.2f} mm²")
    table.add_row("density", f"{result['density_per_mm2']:.2f} mitoses / mm² tissue")
    table.add_row(
        f"hotspot ({hotspot['fields']} HPF, {hotspot['field_diameter_mm']} mm fields)",
        f"{hotspot['count']} mitoses in {hotspot['window_area_mm2']:.2f} mm² "
        f"({hotspot['tissue_area_mm2']:.2f} mm² tissue)",
    )
    table.add_row("Nottingham mitotic score", str(result["mitotic_score"]))
    if any("atypical_probability" in d for d in result["detections"]):
        table.add_row(
            "atypical mitoses", f"{result['atypical_count']} ({100 * result['atypical_fraction']:.0f} % of mitoses)"
        )
    source = f" ({result['slide']['mpp_source']})" if "mpp_source" in result["slide"] else ""
    table.add_row("resolution", f"{result['slide']['mpp_um_per_px']} µm/px{source}")
    table.add_row("model", f"{prov['model']['name']} v{prov['model']['version']} via {prov['model']['backend']}")
    seconds = prov["timing"]["seconds"] if seconds is None else seconds
    tiles = prov["tiles"]["total"]
    table.add_row("tiles", f"{tiles} in {seconds:.1f} s ({tiles / max(seconds, 1e-9):.1f} tiles/s)")
    table.add_row("outputs", str(out_dir))
    Console().print(table)


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="Images (PNG, JPEG, TIFF), each centred on one figure.")],
    mpp: Annotated[
        float, typer.Option(min=0.05, max=4.0, help="Microns per pixel of the images (resampled to the model's).")
    ] = 0.25,
    classifier: Annotated[str, typer.Option(help="Classifier model name or .onnx path.")] = DEFAULT_CLASSIFIER_NAME,
    normalise: Annotated[
        bool, typer.Option(help="Reinhard-normalise each image with its own statistics (off: already normalised).")
    ] = True,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
) -> None:
    """Score single figures with the second stage: mitosis and atypical probabilities per image.

    With --json each line is {"path": ..., "mitosis_probability": ..., "atypical_probability": ...}.
    """
    import json

    from mitoscope.classify import classify_files
    from services.detector.errors import DetectorError

    try:
        rows = classify_files(images, mpp, classifier, _model_repository(), normalise)
    except (DetectorError, ValueError) as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    if json_lines:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("image", "mitosis probability", "atypical probability", "call")
    for row in rows:
        table.add_row(
            row["path"], f"{row['mitosis_probability']:.3f}", f"{row['atypical_probability']:.3f}", row["call"]
        )
    Console().print(table)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Slide to write (e.g. demo.svs); truth goes to <out>.truth.json.")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same slide.")] = 0,
    width: Annotated[int, typer.Option(min=256, max=65536, help="Level-0 width in pixels.")] = 12288,
    height: Annotated[int, typer.Option(min=256, max=65536, help="Level-0 height in pixels.")] = 12288,
    mpp: Annotated[float, typer.Option(min=0.1, max=2.0, help="Microns per pixel of level 0.")] = 0.25,
    mitoses_per_mm2: Annotated[float, typer.Option(min=0.0, help="Average planted mitoses per mm² of tissue.")] = 6.0,
) -> None:
    """Write a synthetic H&E slide with planted mitoses and look-alikes, plus its ground truth."""
    from mitoscope.synth import SynthParams, make_slide

    params = SynthParams(
        width_px=width, height_px=height, seed=seed, mpp_um_per_px=mpp, mitoses_per_mm2=mitoses_per_mm2
    )
    with console.status(f"painting a {width} x {height} px slide (seed {seed})"):
        truth_path = make_slide(out, params)
    import json

    truth = json.loads(truth_path.read_text())
    print(
        f"wrote {out} ({truth['mitosis_count']} planted mitoses, {len(truth['lookalikes'])} look-alikes, "
        f"{truth['tissue_area_mm2']:.2f} mm² tissue); truth: {truth_path}"
    )


@app.command()
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
    from mitoscope.pipeline import REPO_ROOT
    from mitoscope.stack import Stack, StackError
    from mitoscope.synth import SynthParams, make_slide, truth_path_for

    slide = out / "synthetic.svs"
    if not truth_path_for(slide).exists():
        with console.status(f"painting a synthetic {size} x {size} px slide (seed {seed})"):
            make_slide(slide, SynthParams(width_px=size, height_px=size, seed=seed))
    slides = [slide]
    cmu = shared / "slides" / "CMU-1-Small-Region.svs"
    if cmu.is_file():
        slides.append(cmu)
    if not (_model_repository() / "faster_rcnn_mitosis" / "1" / "model.onnx").is_file():
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
            result, seconds = _score_over_rest(urls["gateway"], path, out_dir)
            _print_summary(result, out_dir, seconds)
            _compare_with_truth(path, result)
    finally:
        with console.status("stopping the stack"):
            stack.down()


def _score_over_rest(gateway: str, path: Path, out_dir: Path) -> tuple[dict, float]:  # type: ignore[type-arg]
    """Upload, score and download one slide through the gateway, with a progress bar."""
    import time

    from mitoscope.client import GatewayClient, GatewayError

    started = time.perf_counter()
    with GatewayClient(gateway) as client:
        try:
            with console.status(f"uploading {path.name}"):
                uploaded = client.upload(path)
            job = client.start_job(uploaded["id"])
            bar = _progress_bar()
            task = bar.add_task(f"scoring {path.name}", total=None, rate="")

            def on_progress(state: dict) -> None:  # type: ignore[type-arg]
                if state["tiles_total"]:
                    if not bar.live.is_started:
                        bar.start()
                    elapsed = bar.tasks[task].elapsed or 0.0
                    rate = f"{state['tiles_done'] / elapsed:.1f} tiles/s" if elapsed > 0 else ""
                    bar.update(task, completed=state["tiles_done"], total=state["tiles_total"], rate=rate)

            try:
                final = client.follow(job["id"], on_progress)
            finally:
                bar.stop()
            if final["state"] != "succeeded":
                raise _fail(f"{path.name}: job {job['id']} {final['state']}: {final['error']}", EXIT_UNAVAILABLE)
            client.download_results(job["id"], out_dir)
            return client.result(job["id"]), time.perf_counter() - started
        except GatewayError as e:
            raise _fail(str(e), EXIT_UNAVAILABLE) from None


def _compare_with_truth(path: Path, result: dict) -> None:  # type: ignore[type-arg]
    import json

    from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, match_points
    from mitoscope.synth import truth_path_for

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
    from services.detector.detector import open_detector
    from services.detector.model import DEFAULT_MODEL_NAME

    detector = open_detector(DEFAULT_MODEL_NAME, "onnxruntime", _model_repository(), "")
    try:
        for path in slides:
            out_dir = out / f"{path.name}.mitoscope"
            result = _score_with_progress(path, out_dir, detector, ScoreOptions(), path.name)
            _print_summary(result, out_dir)
            _compare_with_truth(path, result)
    finally:
        detector.close()


@app.command()
def up(
    slides: Annotated[Path, typer.Option(help="Slide root shared by the tiler and the gateway.")] = Path("slides"),
    s3: Annotated[
        bool, typer.Option("--s3", help="Also start a SeaweedFS S3 server; uploads and results go to it.")
    ] = False,
) -> None:
    """Start the local stack on 127.0.0.1: Triton, tiler, preprocess, detector, aggregator, gateway.

    One supervisor process runs them all in the background and restarts any that exits;
    `mitoscope down` stops everything.
    """
    from mitoscope.pipeline import REPO_ROOT
    from mitoscope.stack import Stack, StackError

    stack = Stack(REPO_ROOT, slides.resolve(), REPO_ROOT / ".cache" / "stack", s3=s3)
    try:
        with console.status(
            "starting SeaweedFS, Triton and the services" if s3 else "starting Triton and the services"
        ):
            urls = stack.up()
    except StackError as e:
        raise _fail(str(e), EXIT_UNAVAILABLE) from None
    for name, url in urls.items():
        print(f"{name:12} {url}")
    state = stack.state() or {}
    print(
        f"public API: {urls['gateway']}/docs; supervisor pid {state.get('supervisor_pid')}; "
        f"logs in {stack.state_dir}; stop with `mitoscope down`"
    )


@app.command()
def down() -> None:
    """Stop the local stack that `mitoscope up` started."""
    from mitoscope.pipeline import REPO_ROOT
    from mitoscope.stack import Stack

    stopped = Stack(REPO_ROOT, Path("slides"), REPO_ROOT / ".cache" / "stack").down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def _cache_dir() -> Path:
    """Where s3:// slides are cached for OpenSlide (bounded, content-addressed)."""
    return Path(os.environ.get("MITOSCOPE_CACHE_DIR", Path.home() / ".cache" / "mitoscope")) / "slides"


@app.command()
def watch(
    location: Annotated[str, typer.Argument(help="Folder the scanner writes slides into, or s3://bucket/prefix.")],
    model: Annotated[str, typer.Option(help="Model name, 'ensemble', or an .onnx file.")] = "yolov5n_mitosis",
    backend: Annotated[BackendChoice, typer.Option(help="In-process ONNX Runtime or a Triton server.")] = (
        BackendChoice.onnxruntime
    ),
    triton_url: Annotated[str, typer.Option(help="Triton gRPC address (host:port).")] = DEFAULT_TRITON_URL,
    poll_s: Annotated[float, typer.Option(min=0.1, help="Seconds between looks at the folder.")] = 2.0,
    settle_s: Annotated[
        float, typer.Option(min=0.0, help="Seconds a file must stay unchanged to count as written (folders).")
    ] = 5.0,
    once: Annotated[bool, typer.Option(help="Score what is there now and exit.")] = False,
) -> None:
    """Score every new slide in a folder or S3 prefix, once per content (SHA-256).

    Results go next to each slide (<slide>.mitoscope/), failures into <slide>.mitoscope.error.txt.
    For s3:// the endpoint and keys come from MITOSCOPE_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY.
    """
    import time

    from mitoscope.watch import InProcessScorer, Watcher, describe, open_source
    from services.common.objectstore import ObjectStoreError, is_s3_uri
    from services.detector.detector import open_detector
    from services.detector.errors import DetectorError, InferenceServerError
    from services.tiler.errors import StorageUnavailableError

    if not is_s3_uri(location) and not Path(location).is_dir():
        raise _fail(f"{location}: no such folder", EXIT_BAD_INPUT)
    try:
        source = open_source(location, 0.0 if once else settle_s, _cache_dir())
        detector = open_detector(model, backend.value, _model_repository(), triton_url)
    except (DetectorError, ObjectStoreError) as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    watcher = Watcher(source, InProcessScorer(detector))
    console.print(f"watching {location} (Ctrl-C to stop)" if not once else f"scoring the slides in {location}")
    looks = 0
    try:
        while True:
            try:
                handled = watcher.poll()
            except (ObjectStoreError, StorageUnavailableError, InferenceServerError) as e:
                console.print(f"[yellow]{e}; looking again in {poll_s:.0f} s[/]")  # not the slides' fault
                handled = []
            for slide in handled:
                console.print(f"{slide.name}: {describe(watcher.outcomes[slide.name])}")
            for problem in watcher.problems:
                console.print(f"[yellow]{problem}; trying again at the next look[/]")
            looks += 1
            if once and (looks == 2 or is_s3_uri(location)):  # a folder's first look only notes sizes
                break
            time.sleep(0 if once else poll_s)
    finally:
        detector.close()


@app.command()
def evaluate(
    test: Annotated[Path, typer.Argument(help="COCO JSON of the test split (e.g. from the dataset converter).")],
    images: Annotated[Path, typer.Option(help="Folder the COCO file_name entries are relative to.")],
    val: Annotated[
        Path | None, typer.Option(help="COCO JSON of the validation split: the threshold is chosen there.")
    ] = None,
    model: Annotated[
        str, typer.Option(help="Model name in the model repository, 'ensemble', or an .onnx file.")
    ] = "yolov5n_mitosis",
    out: Annotated[Path, typer.Option(help="Folder for evaluation.json, pr_curve.png and report.md.")] = Path(
        "out/evaluation"
    ),
    dataset: Annotated[str, typer.Option(help="Dataset name for the report table.")] = "dataset",
) -> None:
    """Precision, recall and F1 the MIDOG way (7.5 µm), with a PR curve and a Table-II style row."""
    import json

    from services.aggregator.exports import write_png
    from services.detector.detector import open_detector
    from services.detector.errors import DetectorError
    from training.annotations import AnnotationError
    from training.evaluate import TABLE_HEADER, render_pr_curve, table_row, training_images
    from training.evaluate import evaluate as run_evaluation

    try:
        detector = open_detector(model, "onnxruntime", _model_repository(), "")
    except DetectorError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    try:
        with console.status("detecting on the evaluation images"):
            result = run_evaluation(detector, test, images, val)
    except AnnotationError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    finally:
        detector.close()
    out.mkdir(parents=True, exist_ok=True)
    info = detector.info
    c = result.test
    (out / "evaluation.json").write_text(
        json.dumps(
            {
                "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
                "threshold": result.threshold,
                "threshold_source": result.threshold_source,
                "images": result.images,
                "truths": result.truths,
                "tp": c.tp,
                "fp": c.fp,
                "fn": c.fn,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
                "curve": [{"threshold": t, "tp": m.tp, "fp": m.fp, "fn": m.fn} for t, m in result.curve],
            },
            indent=1,
        )
    )
    write_png(render_pr_curve(result, f"{info.name} on {dataset}"), out / "pr_curve.png")
    row = table_row(
        dataset,
        training_images(info.extra),
        result,
        f"{info.name} v{info.version}",
        f"{info.extra.get('train_seconds', '?')} s",
    )
    (out / "report.md").write_text(f"{TABLE_HEADER}\n{row}\n")
    print(TABLE_HEADER)
    print(row)
    print(f"threshold {result.threshold:.2f} chosen on {result.threshold_source}; outputs in {out}")


@app.command()
def dataset(
    fmt: Annotated[
        str, typer.Argument(metavar="FORMAT", help="platform, qupath, points, mitos2012, centroids or midog.")
    ],
    source: Annotated[Path, typer.Argument(help="Annotation folder, or the file for points / midog.")],
    images: Annotated[Path, typer.Option(help="Image folder the annotations refer to.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (coco/, yolo/, manifest.json).")],
    mpp: Annotated[float | None, typer.Option(help="Microns per pixel, for formats that do not carry it.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split by slide.")] = 0,
    train_fraction: Annotated[float, typer.Option(min=0.05, max=0.95, help="Share of images in train.")] = 0.8,
    min_area_um2: Annotated[float, typer.Option(min=0.0, help="Drop ellipses smaller than this (µm²).")] = 10.0,
    point_box_um: Annotated[float, typer.Option(min=1.0, help="Box side for point annotations (µm).")] = 12.5,
    point_columns: Annotated[
        str, typer.Option(help="Points CSV columns: image,x,y,slide.")
    ] = "patch,mf_x_in_patch,mf_y_in_patch,slide",
) -> None:
    """Annotations to COCO JSON and YOLO txt, split by slide (never by tile), all-or-nothing."""
    from training.annotations import AnnotationError
    from training.convert import read_folder
    from training.datasets import write_dataset

    columns = tuple(point_columns.split(","))
    if len(columns) != 4:
        raise _fail("--point-columns needs four names: image,x,y,slide", EXIT_BAD_INPUT)
    try:
        annotated = read_folder(fmt, source, images, mpp, columns)  # type: ignore[arg-type]
        counts = write_dataset(out, annotated, images, seed, train_fraction, min_area_um2, point_box_um)
    except AnnotationError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    print(", ".join(f"{k} {v}" for k, v in counts.items()) + f"; written to {out}")


TRAINING_HELP = "Runs in the training venv (.venv-train; `make train-venv` creates it). Options: --help."


def _run_in_training_venv(module: str, args: list[str]) -> None:
    """Training needs torch, serving must not: run the recipe with the training venv's Python."""
    import subprocess

    from mitoscope.pipeline import REPO_ROOT

    python = Path(os.environ.get("MITOSCOPE_TRAIN_VENV", REPO_ROOT / ".venv-train")) / "bin" / "python"
    if not python.exists():
        if {"-h", "--help"} & set(args):
            # Every recipe imports torch only once its options are parsed: its help needs no training venv.
            python = Path(sys.executable)
        else:
            raise _fail(f"no training venv at {python.parent.parent}; create it with `make train-venv`", EXIT_BAD_INPUT)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(REPO_ROOT / ".cache" / "ultralytics"),
    }
    raise typer.Exit(subprocess.call([str(python), "-m", module, *args], env=env))


train_app = typer.Typer(
    help="Train a detector from scratch, seeded and resumable. " + TRAINING_HELP, no_args_is_help=True
)
app.add_typer(train_app, name="train")
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@train_app.command("yolo", context_settings=_PASS_THROUGH, add_help_option=False)
def train_yolo(ctx: typer.Context) -> None:
    """YOLOv5 (ultralytics yolov5n.yaml / yolov5s.yaml): dataset, training, export, threshold."""
    _run_in_training_venv("training.train_yolo", ctx.args)


@train_app.command("frcnn", context_settings=_PASS_THROUGH, add_help_option=False)
def train_frcnn(ctx: typer.Context) -> None:
    """Faster R-CNN with a ResNet-FPN backbone (torchvision); torchrun for several GPUs."""
    _run_in_training_venv("training.train_frcnn", ctx.args)


@train_app.command("classifier", context_settings=_PASS_THROUGH, add_help_option=False)
def train_classifier(ctx: typer.Context) -> None:
    """The second stage: mitosis vs look-alike and atypical vs normal on crops, with hard negatives."""
    _run_in_training_venv("training.train_classifier", ctx.args)


@app.command("export", context_settings=_PASS_THROUGH, add_help_option=False)
def export(ctx: typer.Context) -> None:
    """Export a checkpoint to ONNX with its metadata and install it with its Triton configs."""
    _run_in_training_venv("training.export", ctx.args)


def run() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
