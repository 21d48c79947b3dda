"""Measure the shipped detector where it was never trained, and write its model card figures.

    python -m training.evaluate_shipped --shared ../shared

Each figure is measured twice, side by side: the detector alone, and with the second stage
(the crop classifier). What is measured (none of it was ever trained on):

1. Synthetic slides with seeds the training set never used, scored by the full pipeline
   (`mitoscope.pipeline.score_slide`): recall, precision and count error against the planted
   mitoses (MIDOG matching: 7.5 µm).
2. Held-out AMi-Br crops (whole source slides no training saw: the seeded split that
   `training.yolo_dataset` and the classifier's training both use): crops of one source slide
   are Reinhard-normalised with that slide's statistics, packed 16 to a 512 px tile, and every
   listed mitosis is matched within 7.5 µm. The crops hold positives only, so precision there
   counts any detection that is not a listed mitosis as false, including unlabelled look-alikes.
3. Real look-alikes (held-out CoNSeP and NuCLS images), calls per mm² on the real CMU-1 slide,
   and atypical vs normal on the held-out AMi-Br slides (`training/evaluate_tissue.py`).
Runs with the serving venv only (no torch).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, MatchCounts, match_points
from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.slide_files import make_slide, truth_path_for
from mitoscope.synth import SynthParams
from services.common.files import REPO_ROOT
from services.detector.classifier import NO_CLASSIFIER, TwoStageDetector
from services.detector.detector import Detector, open_detector
from services.detector.model import DEFAULT_CLASSIFIER_NAME
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images
from training.evaluate_tissue import (
    atypical_balanced_accuracy,
    calls_per_mm2,
    false_calls_on_lookalikes,
    held_out_amibr,
)
from training.mosaic import pack
from training.yolo_dataset import CROP_PX, load_rgb

EVAL_SEEDS = (900_001, 900_002, 900_003)  # never used by training (training uses 10_000 + ...)
MPP_UM_PER_PX = 0.25
TILE_PX = 512


def evaluate_synthetic(detector: Detector, size_px: int, threshold: float | None) -> list[dict[str, object]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in EVAL_SEEDS:
            slide = Path(tmp) / f"eval-{seed}.svs"
            make_slide(slide, SynthParams(width_px=size_px, height_px=size_px, seed=seed, mitoses_per_mm2=10.0))
            truth = json.loads(truth_path_for(slide).read_text())
            result = score_slide(slide, Path(tmp) / f"eval-{seed}", detector, ScoreOptions(score_threshold=threshold))
            counts = match_points(
                ((d["x_px"], d["y_px"], d["score"]) for d in result["detections"]),
                ((m["x_px"], m["y_px"]) for m in truth["mitoses"]),
                MIDOG_MATCH_RADIUS_UM / MPP_UM_PER_PX,
            )
            rows.append(
                {
                    "seed": seed,
                    "planted": truth["mitosis_count"],
                    "counted": result["mitosis_count"],
                    "tp": counts.tp,
                    "fp": counts.fp,
                    "fn": counts.fn,
                }
            )
    return rows


def evaluate_amibr(
    detector: Detector, amibr: Path, threshold: float | None, split: str = "test", seed: int = 0
) -> MatchCounts:
    """Held-out (or validation) AMi-Br slides of the seeded split the training runs used."""
    target = LabStats.from_dict(detector.info.reinhard_target_lab)
    total = MatchCounts(0, 0, 0)
    per_row = TILE_PX // CROP_PX
    for crops in held_out_amibr(amibr, seed, split).values():
        images = [load_rgb(c.path) for c in crops]
        normalise = ReinhardNormaliser(stats_from_images(images), target)
        for start in range(0, len(crops), per_row * per_row):
            chunk = list(zip(crops[start : start + per_row**2], images[start : start + per_row**2], strict=True))
            tile, offsets = pack([normalise(image) for _, image in chunk], TILE_PX)
            truths = [
                (x + ox, y + oy) for (crop, _), (ox, oy) in zip(chunk, offsets, strict=True) for x, y in crop.points
            ]
            (dets,) = detector.detect(tile[None], threshold)
            centres = (
                (float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2, float(s))
                for b, s in zip(dets.boxes_px, dets.scores, strict=True)
            )
            total = total + match_points(centres, truths, MIDOG_MATCH_RADIUS_UM / MPP_UM_PER_PX)
    return total


def _counts(counts: MatchCounts) -> dict[str, float]:
    return {
        "tp": counts.tp,
        "fp": counts.fp,
        "fn": counts.fn,
        "recall": round(counts.recall, 4),
        "precision": round(counts.precision, 4),
        "f1": round(counts.f1, 4),
    }


def evaluate(detector: Detector, shared: Path, synthetic_size: int) -> dict[str, object]:
    """Every figure of the model card for one configuration (detector alone, or two stages)."""
    report: dict[str, object] = {"model": detector.info.name, "sha256": detector.info.sha256}
    synthetic = evaluate_synthetic(detector, synthetic_size, None)
    summed = MatchCounts(0, 0, 0)
    for row in synthetic:
        summed = summed + MatchCounts(int(row["tp"]), int(row["fp"]), int(row["fn"]))  # type: ignore[call-overload]
    report["synthetic"] = {"slides": synthetic, **_counts(summed)}
    amibr = shared / "data" / "amibr"
    if amibr.is_dir():
        report["amibr_test"] = _counts(evaluate_amibr(detector, amibr, None))
    if (shared / "data" / "consep").is_dir() and (shared / "data" / "nucls").is_dir():
        report["lookalikes_test"] = false_calls_on_lookalikes(detector, shared / "data")
    cmu1 = shared / "slides" / "CMU-1-Small-Region.svs"
    if cmu1.is_file():
        report["cmu1"] = calls_per_mm2(detector, cmu1)
    if isinstance(detector, TwoStageDetector) and amibr.is_dir():
        report["atypia_test"] = atypical_balanced_accuracy(detector.classifier, amibr)
    return report


ROWS = (
    ("recall, held-out AMi-Br slides (7.5 µm)", ("amibr_test", "recall"), ">= 0.95"),
    ("precision, held-out AMi-Br crops", ("amibr_test", "precision"), "-"),
    ("calls per mm² of tissue, CMU-1", ("cmu1", "calls_per_mm2"), "<= 2"),
    ("false calls per 100 look-alikes, CoNSeP test", ("lookalikes_test", "consep", "false_calls_per_100"), "report"),
    ("false calls per 100 look-alikes, NuCLS test", ("lookalikes_test", "nucls", "false_calls_per_100"), "report"),
    ("atypical vs normal balanced accuracy, held-out AMi-Br", ("atypia_test", "balanced_accuracy"), ">= 0.75"),
    ("planted-truth F1, unseen synthetic slides", ("synthetic", "f1"), ">= 0.95"),
)


def _lookup(report: dict[str, object], path: tuple[str, ...]) -> str:
    value: object = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return "-"
        value = value[key]
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(reports: dict[str, dict[str, object]]) -> str:
    names = list(reports)
    lines = [f"| figure | goal | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    for label, path, goal in ROWS:
        lines.append(f"| {label} | {goal} | " + " | ".join(_lookup(reports[n], path) for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov5n_mitosis", help="model name, 'ensemble', or an .onnx path")
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER_NAME, help="second stage; 'none' to skip it")
    parser.add_argument(
        "--shared", type=Path, default=REPO_ROOT.parent / "shared", help="data and slides; parts skipped when absent"
    )
    parser.add_argument("--synthetic-size", type=int, default=8192, help="side of each synthetic slide in px")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/evaluation-<model>.json")
    parser.add_argument("--reuse", type=Path, help="an earlier report: configurations of the same models are kept")
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "runs" / f"evaluation-{Path(args.model).stem}.json"

    configurations = {"detector alone": NO_CLASSIFIER}
    if args.classifier != NO_CLASSIFIER:
        configurations["with the second stage"] = args.classifier
    earlier = json.loads(args.reuse.read_text())["reports"] if args.reuse else {}
    reports: dict[str, dict[str, object]] = {}
    for label, classifier in configurations.items():
        detector = open_detector(args.model, "onnxruntime", REPO_ROOT / "model_repository", "", classifier=classifier)
        try:
            if earlier.get(label, {}).get("sha256") == detector.info.sha256:  # the same models: measured already
                reports[label] = earlier[label]
            else:
                reports[label] = evaluate(detector, args.shared, args.synthetic_size)
        finally:
            detector.close()
        print(f"{label}: done", flush=True)
    table = markdown_table(reports)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reports": reports, "table": table}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
