"""`mitoscope`: score slides for mitoses, make synthetic slides.

Exit codes: 0 success, 2 bad input (slide, model, parameter), 3 a dependency is unavailable
(object store, inference server).

One module per command; this one only wires them into the Typer app. Command modules import
their heavy dependencies (OpenCV, ONNX Runtime, the pipeline) inside the command, so that
`mitoscope --help` stays fast.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from mitoscope import __version__
from mitoscope.cli import classify, dataset, demo, evaluate, score, stack, synth, train, watch
from mitoscope.cli.console import console

app = typer.Typer(
    help="mitoscope: count mitoses on breast-cancer H&E whole-slide images and give the "
    "Nottingham mitotic score, with every detection shown where it was found.\n\n"
    "Start with `mitoscope synth demo.svs` then `mitoscope score demo.svs`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


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


# In the order `mitoscope --help` lists them.
app.command()(score.score)
app.command()(classify.classify)
app.command()(synth.synth)
app.command()(demo.demo)
app.command()(stack.up)
app.command()(stack.down)
app.command()(watch.watch)
app.command()(evaluate.evaluate)
app.command()(dataset.dataset)
app.command("export", context_settings=train.PASS_THROUGH, add_help_option=False)(train.export)
app.add_typer(train.train_app, name="train")


def run() -> None:
    """The `mitoscope` console script."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
