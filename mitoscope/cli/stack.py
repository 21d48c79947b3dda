"""`mitoscope up` and `mitoscope down`: the local stack on 127.0.0.1, under one supervisor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitoscope.cli.console import EXIT_UNAVAILABLE, console, fail


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
    from mitoscope.stack import Stack, StackError
    from services.common.files import REPO_ROOT

    stack = Stack(REPO_ROOT, slides.resolve(), REPO_ROOT / ".cache" / "stack", s3=s3)
    try:
        with console.status(
            "starting SeaweedFS, Triton and the services" if s3 else "starting Triton and the services"
        ):
            urls = stack.up()
    except StackError as e:
        raise fail(str(e), EXIT_UNAVAILABLE) from None
    for name, url in urls.items():
        print(f"{name:12} {url}")
    state = stack.state() or {}
    print(
        f"public API: {urls['gateway']}/docs; supervisor pid {state.get('supervisor_pid')}; "
        f"logs in {stack.state_dir}; stop with `mitoscope down`"
    )


def down() -> None:
    """Stop the local stack that `mitoscope up` started."""
    from mitoscope.stack import Stack
    from services.common.files import REPO_ROOT

    stopped = Stack(REPO_ROOT, Path("slides"), REPO_ROOT / ".cache" / "stack").down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
