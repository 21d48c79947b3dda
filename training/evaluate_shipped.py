"""Measure the shipped detector where it was never trained, and write its model card figures.

    python -m training.evaluate_shipped --amibr ../shared/data/amibr

1. Synthetic slides with seeds the training set never used, scored by the full pipeline
   (`mitoscope.pipeline.score_slide`): recall, precision and count error against the planted
   mitoses (MIDOG matching: 7.5 µm).
2. Held-out AMi-Br crops (whole source slides the training split never saw, as recorded in the
   training manifest): crops of one source slide are Reinhard-normalised with that slide's
   statistics, packed 16 to a 512 px tile, and every listed mitosis is matched within 7.5 µm.
   The crops hold positives only, so precision there counts any detection that is not a listed
   mitosis as false, including unlabelled look-alikes.
Runs with the serving venv only (no torch).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, MatchCounts, match_points
from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.synth import SynthParams, make_slide, truth_path_for
from services.detector.detector import Detector, open_detector
from services.preprocess.reinhard import LabStats, ReinhardNormaliser, stats_from_images
from training.mosaic import pack
from training.yolo_dataset import CROP_PX, load_rgb, read_amibr

REPO = Path(__file__).resolve().parents[1]
EVAL_SEEDS = (900_001, 900_002, 900_003)  # never used by training (training uses 10_000 + ...)
MPP_UM_PER_PX = 0.25
TILE_PX = 512


def evaluate_synthetic(detector: Detector, size_px: int, threshold: float) -> list[dict[str, object]]:
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


def evaluate_amibr(detector: Detector, amibr: Path, manifest: dict[str, object], threshold: float) -> MatchCounts:
    split_of: dict[str, str] = manifest["amibr_slides"]  # type: ignore[assignment]
    target = LabStats.from_dict(detector.info.reinhard_target_lab)
    by_slide = defaultdict(list)
    for crop in read_amibr(amibr):
        if split_of.get(crop.source_slide) == "test":
            by_slide[crop.source_slide].append(crop)
    total = MatchCounts(0, 0, 0)
    per_row = TILE_PX // CROP_PX
    for crops in by_slide.values():
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov5n_mitosis", help="model name, 'ensemble', or an .onnx path")
    parser.add_argument("--amibr", type=Path, default=None, help="AMi-Br folder; skipped when absent")
    parser.add_argument(
        "--manifest",
        type=Path,
        default=REPO / "runs" / "yolo" / "dataset" / "manifest.json",
        help="the training run's dataset manifest (which source slides were held out)",
    )
    parser.add_argument("--synthetic-size", type=int, default=8192, help="side of each synthetic slide in px")
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's validated threshold")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/evaluation-<model>.json")
    args = parser.parse_args(argv)
    out = args.out or REPO / "runs" / f"evaluation-{Path(args.model).stem}.json"

    detector = open_detector(args.model, "onnxruntime", REPO / "model_repository", "")
    threshold = detector.info.score_threshold if args.threshold is None else args.threshold
    report: dict[str, object] = {"model_sha256": detector.info.sha256, "threshold": threshold}
    synthetic = evaluate_synthetic(detector, args.synthetic_size, threshold)
    summed = MatchCounts(0, 0, 0)
    for row in synthetic:
        summed = summed + MatchCounts(int(row["tp"]), int(row["fp"]), int(row["fn"]))  # type: ignore[call-overload]
    report["synthetic"] = {"slides": synthetic, "recall": summed.recall, "precision": summed.precision, "f1": summed.f1}
    print(
        f"synthetic ({len(synthetic)} unseen slides): recall {summed.recall:.3f} precision {summed.precision:.3f} "
        f"F1 {summed.f1:.3f}; planted/counted {[(r['planted'], r['counted']) for r in synthetic]}"
    )
    if args.amibr is not None and args.amibr.exists() and args.manifest.exists():
        manifest = json.loads(args.manifest.read_text())
        counts = evaluate_amibr(detector, args.amibr, manifest, threshold)
        report["amibr_test"] = {
            "tp": counts.tp,
            "fp": counts.fp,
            "fn": counts.fn,
            "recall": counts.recall,
            "precision": counts.precision,
            "f1": counts.f1,
            "test_slides": sorted(s for s, v in manifest["amibr_slides"].items() if v == "test"),
        }
        print(
            f"AMi-Br held-out slides: recall {counts.recall:.3f} precision {counts.precision:.3f} "
            f"(TP {counts.tp}, FP {counts.fp}, FN {counts.fn})"
        )
    detector.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
