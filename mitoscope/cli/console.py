"""The terminal side of the CLI: one stderr console, exit codes, the error line, progress and summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)  # progress, status and errors; results go to stdout
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


def fail(message: str, code: int) -> typer.Exit:
    """Print one `error:` line and return the exit to raise (`raise fail(...) from None`)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def progress_bar() -> Progress:
    """A tile progress bar; its task takes a `rate` field (e.g. "12.3 tiles/s")."""
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


def show_tiles(bar: Progress, task: TaskID, done: int, total: int) -> None:
    """Move the bar to `done` of `total` tiles; it appears with the first call."""
    if not bar.live.is_started:
        bar.start()
    elapsed = bar.tasks[task].elapsed or 0.0
    rate = f"{done / elapsed:.1f} tiles/s" if elapsed > 0 and done else ""
    bar.update(task, completed=done, total=total, rate=rate)


def print_summary(result: dict[str, Any], out_dir: Path, seconds: float | None = None) -> None:
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
    if any(d.get("atypical_probability") is not None for d in result["detections"]):
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
