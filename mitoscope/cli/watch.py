"""`mitoscope watch`: score every new slide in a folder or S3 prefix, once per content."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitoscope.cli.console import EXIT_BAD_INPUT, console, fail
from mitoscope.cli.options import DEFAULT_TRITON_URL, BackendChoice, cache_dir, model_repository
from services.common.options import DEFAULT_MODEL_NAME


def watch(
    location: Annotated[str, typer.Argument(help="Folder the scanner writes slides into, or s3://bucket/prefix.")],
    model: Annotated[str, typer.Option(help="Model name, 'ensemble', or an .onnx file.")] = DEFAULT_MODEL_NAME,
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

    from mitoscope.pipeline import score_slide
    from services.common.errors import TransientError
    from services.common.objectstore import ObjectStoreError, is_s3_uri
    from services.detector.detector import open_detector
    from services.detector.errors import DetectorError
    from services.watcher import InProcessScorer, Watcher, describe, open_source

    if not is_s3_uri(location) and not Path(location).is_dir():
        raise fail(f"{location}: no such folder", EXIT_BAD_INPUT)
    try:
        source = open_source(location, 0.0 if once else settle_s, cache_dir())
        detector = open_detector(model, backend.value, model_repository(), triton_url)
    except (DetectorError, ObjectStoreError) as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
    scorer = InProcessScorer(lambda path, out_dir, name: score_slide(path, out_dir, detector, display_name=name))
    watcher = Watcher(source, scorer)
    console.print(f"watching {location} (Ctrl-C to stop)" if not once else f"scoring the slides in {location}")
    looks = 0
    try:
        while True:
            try:
                handled = watcher.poll()
            except (TransientError, ObjectStoreError) as e:  # the store or the model server: not the slides' fault
                console.print(f"[yellow]{e}; looking again in {poll_s:.0f} s[/]")
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
