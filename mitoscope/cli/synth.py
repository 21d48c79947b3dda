"""`mitoscope synth`: a synthetic H&E slide with planted mitoses and its ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitoscope.cli.console import console


def synth(
    out: Annotated[Path, typer.Argument(help="Slide to write (e.g. demo.svs); truth goes to <out>.truth.json.")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same slide.")] = 0,
    width: Annotated[int, typer.Option(min=256, max=65536, help="Level-0 width in pixels.")] = 12288,
    height: Annotated[int, typer.Option(min=256, max=65536, help="Level-0 height in pixels.")] = 12288,
    mpp: Annotated[float, typer.Option(min=0.1, max=2.0, help="Microns per pixel of level 0.")] = 0.25,
    mitoses_per_mm2: Annotated[float, typer.Option(min=0.0, help="Average planted mitoses per mm² of tissue.")] = 6.0,
) -> None:
    """Write a synthetic H&E slide with planted mitoses and look-alikes, plus its ground truth."""
    import json

    from mitoscope.slide_files import make_slide
    from mitoscope.synth import SynthParams

    params = SynthParams(
        width_px=width, height_px=height, seed=seed, mpp_um_per_px=mpp, mitoses_per_mm2=mitoses_per_mm2
    )
    with console.status(f"painting a {width} x {height} px slide (seed {seed})"):
        truth_path = make_slide(out, params)
    truth = json.loads(truth_path.read_text())
    print(
        f"wrote {out} ({truth['mitosis_count']} planted mitoses, {len(truth['lookalikes'])} look-alikes, "
        f"{truth['tissue_area_mm2']:.2f} mm² tissue); truth: {truth_path}"
    )
