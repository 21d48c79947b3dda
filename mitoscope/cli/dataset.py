"""`mitoscope dataset`: annotations of several formats to COCO JSON and YOLO txt, split by slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitoscope.cli.console import EXIT_BAD_INPUT, fail


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

    columns = point_columns.split(",")
    if len(columns) != 4:
        raise fail("--point-columns needs four names: image,x,y,slide", EXIT_BAD_INPUT)
    image_column, x_column, y_column, slide_column = columns
    try:
        annotated = read_folder(fmt, source, images, mpp, (image_column, x_column, y_column, slide_column))
        counts = write_dataset(out, annotated, images, seed, train_fraction, min_area_um2, point_box_um)
    except AnnotationError as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
    print(", ".join(f"{k} {v}" for k, v in counts.items()) + f"; written to {out}")
