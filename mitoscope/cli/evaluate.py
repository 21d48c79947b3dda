"""`mitoscope evaluate`: precision, recall and F1 the MIDOG way on a COCO test split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitoscope.cli.console import EXIT_BAD_INPUT, console, fail
from mitoscope.cli.options import model_repository
from services.common.options import DEFAULT_MODEL_NAME


def evaluate(
    test: Annotated[Path, typer.Argument(help="COCO JSON of the test split (e.g. from the dataset converter).")],
    images: Annotated[Path, typer.Option(help="Folder the COCO file_name entries are relative to.")],
    val: Annotated[
        Path | None, typer.Option(help="COCO JSON of the validation split: the threshold is chosen there.")
    ] = None,
    model: Annotated[
        str, typer.Option(help="Model name in the model repository, 'ensemble', or an .onnx file.")
    ] = DEFAULT_MODEL_NAME,
    out: Annotated[Path, typer.Option(help="Folder for evaluation.json, pr_curve.png and report.md.")] = Path(
        "out/evaluation"
    ),
    dataset: Annotated[str, typer.Option(help="Dataset name for the report table.")] = "dataset",
) -> None:
    """Precision, recall and F1 the MIDOG way (7.5 µm), with a PR curve and a Table-II style row."""
    from services.detector.classifier import NO_CLASSIFIER
    from services.detector.detector import open_detector
    from services.detector.errors import DetectorError
    from training.annotations import AnnotationError
    from training.evaluate import TABLE_HEADER, write_evaluation
    from training.evaluate import evaluate as run_evaluation

    try:
        # A detector's P/R/F1 over its own score, as the paper's Table II; the second stage is
        # measured on real tissue by `python -m training.evaluate_shipped`.
        detector = open_detector(model, "onnxruntime", model_repository(), "", classifier=NO_CLASSIFIER)
    except DetectorError as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
    try:
        with console.status("detecting on the evaluation images"):
            result = run_evaluation(detector, test, images, val)
    except AnnotationError as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
    finally:
        detector.close()
    row = write_evaluation(out, result, detector.info, dataset)
    print(TABLE_HEADER)
    print(row)
    print(f"threshold {result.threshold:.2f} chosen on {result.threshold_source}; outputs in {out}")
