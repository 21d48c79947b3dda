"""`mitoscope train ...` and `mitoscope export`: training recipes, run with the training venv's Python.

Each recipe parses its own options (the CLI passes them through), so `--help` is the recipe's own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from mitoscope.cli.console import EXIT_BAD_INPUT, fail

TRAINING_HELP = "Runs in the training venv (.venv-train; `make train-venv` creates it). Options: --help."
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

train_app = typer.Typer(
    help="Train a detector from scratch, seeded and resumable. " + TRAINING_HELP, no_args_is_help=True
)


def _run_in_training_venv(module: str, args: list[str]) -> None:
    """Training needs torch, serving must not: run the recipe with the training venv's Python."""
    import subprocess

    from services.common.files import REPO_ROOT

    python = Path(os.environ.get("MITOSCOPE_TRAIN_VENV", REPO_ROOT / ".venv-train")) / "bin" / "python"
    if not python.exists():
        if {"-h", "--help"} & set(args):
            # Every recipe imports torch only once its options are parsed: its help needs no training venv.
            python = Path(sys.executable)
        else:
            raise fail(f"no training venv at {python.parent.parent}; create it with `make train-venv`", EXIT_BAD_INPUT)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(REPO_ROOT / ".cache" / "ultralytics"),
    }
    raise typer.Exit(subprocess.call([str(python), "-m", module, *args], env=env))


@train_app.command("yolo", context_settings=PASS_THROUGH, add_help_option=False)
def train_yolo(ctx: typer.Context) -> None:
    """YOLOv5 (ultralytics yolov5n.yaml / yolov5s.yaml): dataset, training, export, threshold."""
    _run_in_training_venv("training.train_yolo", ctx.args)


@train_app.command("frcnn", context_settings=PASS_THROUGH, add_help_option=False)
def train_frcnn(ctx: typer.Context) -> None:
    """Faster R-CNN with a ResNet-FPN backbone (torchvision); torchrun for several GPUs."""
    _run_in_training_venv("training.train_frcnn", ctx.args)


@train_app.command("classifier", context_settings=PASS_THROUGH, add_help_option=False)
def train_classifier(ctx: typer.Context) -> None:
    """The second stage: mitosis vs look-alike and atypical vs normal on crops, with hard negatives."""
    _run_in_training_venv("training.train_classifier", ctx.args)


def export(ctx: typer.Context) -> None:
    """Export a checkpoint to ONNX with its metadata and install it with its Triton configs."""
    _run_in_training_venv("training.export", ctx.args)
