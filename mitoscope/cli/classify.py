"""`mitoscope classify`: the second stage alone, on images each centred on one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mitoscope.cli.console import EXIT_BAD_INPUT, fail
from mitoscope.cli.options import model_repository
from services.detector.model import DEFAULT_CLASSIFIER_NAME


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
        rows = classify_files(images, mpp, classifier, model_repository(), normalise)
    except (DetectorError, ValueError) as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
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
