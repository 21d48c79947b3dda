"""The CLI package: its entry points, a light `--help`, and the demo's REST loop failing in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import typer

from mitoscope.cli.console import EXIT_UNAVAILABLE
from mitoscope.cli.demo import score_over_rest
from services.common.files import REPO_ROOT

COMMANDS = ("score", "classify", "synth", "demo", "up", "down", "watch", "evaluate", "dataset", "export", "train")
CLI_TIMEOUT_S = 60


def test_python_dash_m_lists_every_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mitoscope.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    positions = [proc.stdout.index(f"│ {command} ") for command in COMMANDS]
    assert positions == sorted(positions), "the commands are listed in their usual order"


def test_console_script_is_the_package_run() -> None:
    from mitoscope.cli import run

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mitoscope"]
    assert script.value == "mitoscope.cli:run"
    assert script.load() is run


def test_help_loads_no_model_runtime_and_no_http_client() -> None:
    """Command modules import their heavy dependencies inside the command."""
    code = (
        "import contextlib, io, sys\n"
        "from mitoscope.cli import app\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    app(['--help'])\n"
        "heavy = ('mitoscope.pipeline', 'onnxruntime', 'tritonclient', 'torch', 'httpx', 'training.evaluate')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"loaded for --help: {proc.stdout}"


def test_demo_over_rest_reports_an_unreachable_gateway_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: a real ConnectError
    slide = tmp_path / "case.svs"
    slide.write_bytes(b"slide")
    with pytest.raises(typer.Exit) as caught:
        score_over_rest(f"http://127.0.0.1:{port}", slide, tmp_path / "out")
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "cannot connect" in message and "Traceback" not in message, message
    assert not (tmp_path / "out").exists()
