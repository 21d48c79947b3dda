"""Train the second stage: a small crop classifier, mitosis vs look-alike and atypical vs normal.

    mitoscope train classifier --shared ../shared/data --out runs/classifier \\
        --detector model_repository/yolov5n_mitosis/1/model.onnx --install model_repository/mitosis_classifier

Steps, each skipped when its output exists (so an interrupted run resumes where it stopped):
1. the sample set (`training/classifier_data.py`), normalised to the detector's Reinhard target
   (read from the detector ONNX) and with its calls on negative images mined as hard negatives;
2. training from scratch, seeded, a checkpoint per epoch (`last.pt`, resumed; `best.pt`);
3. thresholds chosen on the validation split: the mitosis threshold is the highest whose
   validation recall is at least `--target-recall`, the atypical one maximises balanced accuracy;
4. the test split reported per source, then the ONNX export with its metadata;
5. the detector threshold the second stage starts from, chosen on validation images
   (`training/candidates.py`); then installed with its Triton configs when `--install` is given.

The network, its views and the export are in `training/classifier_model.py`; the metrics and the
threshold choice in `training/classifier_metrics.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.classifier_metrics import (
    choose_thresholds,
    report,
    validation_score,
)
from training.classifier_model import (
    CROP_PX,
    OUTPUT_FORMAT,
    augment,
    build_network,
    centre_crop,
    export_onnx,
    predict,
)

NEGATIVES_PER_POSITIVE = 3  # each epoch draws this many negatives per positive, afresh
HARD_WEIGHT = 8.0  # a negative the previous round called certain is drawn up to 9x as often
DEFAULT_EPOCHS = 24
DEFAULT_TARGET_RECALL = 0.97
MODEL_NAME = "mitosis_classifier"
PROG = "mitoscope train classifier"  # as invoked through the mitoscope CLI


def hardness(model_path: Path, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """A previous round's mitosis probability for each sample (its centre crop): the mining signal."""
    from services.detector.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model_path)
    out = [backend.infer(centre_crop(images[i : i + 1024]))[:, 0] for i in range(0, len(images), 1024)]
    backend.close()
    return np.concatenate(out).astype(np.float32)


def train(
    data: dict[str, npt.NDArray[Any]],
    out_dir: Path,
    epochs: int,
    seed: int,
    batch_size: int,
    hard: npt.NDArray[np.float32] | None = None,
) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = build_network()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    start_epoch, best = 0, -1.0
    last, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last.exists():
        state = torch.load(last, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        print(f"resuming after epoch {start_epoch} (best validation score {best:.4f})", flush=True)

    train_idx = np.flatnonzero(data["split"] == 0)
    val_idx = np.flatnonzero(data["split"] == 1)
    positives = train_idx[data["is_mitosis"][train_idx] == 1]
    negatives = train_idx[data["is_mitosis"][train_idx] == 0]
    # The detector's own false calls are the hardest negatives: every epoch sees all of them.
    is_mined = np.char.find(data["source"][negatives].astype(str), ":mined") >= 0
    mined, ordinary = negatives[is_mined], negatives[~is_mined]
    bce = nn.BCEWithLogitsLoss(reduction="none")
    atypical_fraction = float(np.mean(data["atypical"][positives][data["atypical"][positives] >= 0]))
    atypical_weight = torch.tensor((1 - atypical_fraction) / max(atypical_fraction, 1e-3))
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng(seed * 1000 + epoch)  # per epoch, so a resumed run draws the same
        wanted = max(0, NEGATIVES_PER_POSITIVE * len(positives) - len(mined))
        # With a previous round, the negatives it scored high are drawn more often (hard-negative mining).
        weights = None if hard is None else 1.0 + HARD_WEIGHT * hard[ordinary]
        drawn = rng.choice(
            ordinary,
            size=min(len(ordinary), wanted),
            replace=False,
            p=None if weights is None else weights / weights.sum(),
        )
        order = rng.permutation(np.concatenate([positives, mined, drawn]))
        model.train()
        started, losses = time.perf_counter(), []
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in batches:
            crops = np.stack([augment(data["images"][i], rng) for i in idx])
            logits = model(torch.from_numpy(crops))
            is_mitosis = torch.from_numpy(data["is_mitosis"][idx].astype(np.float32))
            atypical = torch.from_numpy(data["atypical"][idx].astype(np.float32))
            known = (atypical >= 0).float()
            loss = bce(logits[:, 0], is_mitosis).mean()
            weights = known * torch.where(atypical > 0, atypical_weight, torch.tensor(1.0))
            loss = loss + (bce(logits[:, 1], atypical.clamp(min=0)) * weights).sum() / known.sum().clamp(min=1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scheduler.step()
        probs = predict(model, data["images"][val_idx])
        score = validation_score(probs, data["is_mitosis"][val_idx], data["atypical"][val_idx])
        print(
            f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, validation {score:.4f}, "
            f"{len(order) / (time.perf_counter() - started):.0f} samples/s",
            flush=True,
        )
        state = {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best": max(best, score),
        }
        if score > best:
            best = score
            torch.save(state, best_path)
        torch.save(state, last.with_suffix(".tmp"))
        last.with_suffix(".tmp").rename(last)
    model.load_state_dict(torch.load(best_path, weights_only=False)["model"])
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="folder with amibr/, consep/, ...")
    parser.add_argument("--out", type=Path, default=Path("runs/classifier"), help="run folder (resumed if present)")
    parser.add_argument(
        "--detector",
        type=Path,
        default=Path("model_repository/yolov5n_mitosis/1/model.onnx"),
        help="detector ONNX: its Reinhard target is used, and its calls are mined as hard negatives",
    )
    parser.add_argument("--mine-threshold", type=float, default=0.1, help="detector score for mining (candidates)")
    parser.add_argument("--no-mining", action="store_true", help="do not mine the detector's calls")
    parser.add_argument("--synth-images", type=int, default=10, help="synthetic 1536 px images (0: none)")
    parser.add_argument(
        "--hard-from", type=Path, help="a previous round's model.onnx: negatives it scores high are drawn more often"
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL)
    parser.add_argument("--version", default="1", help="model version written to the metadata")
    parser.add_argument("--install", type=Path, help="model_repository/<name>: install the ONNX as the next version")
    args = parser.parse_args(argv)

    import torch

    from services.detector.backends import OnnxRuntimeBackend
    from services.preprocess.reinhard import LabStats
    from training import classifier_data

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    detector = OnnxRuntimeBackend(args.detector)
    target = LabStats.from_dict(detector.info.reinhard_target_lab)
    candidate_threshold = args.mine_threshold
    detector.close()
    data_path = args.out / "samples.npz"
    if not data_path.exists():
        started = time.perf_counter()
        manifest = classifier_data.build(
            data_path,
            args.shared,
            target,
            args.seed,
            args.synth_images,
            None if args.no_mining else args.detector,
            args.mine_threshold,
        )
        print(f"sample set built in {time.perf_counter() - started:.0f} s: {manifest['counts']}", flush=True)
    manifest = json.loads(data_path.with_suffix(".json").read_text())
    loaded = np.load(data_path)
    data = {k: loaded[k] for k in loaded.files}
    print(f"{len(data['images'])} samples, {int(data['is_mitosis'].sum())} mitoses", flush=True)

    hard = hardness(args.hard_from, data["images"]) if args.hard_from else None
    model = train(data, args.out, args.epochs, args.seed, args.batch_size, hard)
    val = np.flatnonzero(data["split"] == 1)
    test = np.flatnonzero(data["split"] == 2)
    val_probs = predict(model, data["images"][val])
    mitosis_t, atypical_t = choose_thresholds(
        val_probs, data["is_mitosis"][val], data["atypical"][val], args.target_recall
    )
    test_probs = predict(model, data["images"][test])
    summary = {
        "mitosis_threshold": mitosis_t,
        "atypical_threshold": atypical_t,
        "validation": report(val_probs, data, val, mitosis_t, atypical_t),
        "test": report(test_probs, data, test, mitosis_t, atypical_t),
        "data_sha256": manifest["data_sha256"],
        "counts": manifest["counts"],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("mitosis_threshold", "atypical_threshold", "test")}, indent=1))

    metadata = {
        "model_name": MODEL_NAME,
        "model_version": args.version,
        "input_size_px": str(CROP_PX),
        "mpp_um_per_px": str(classifier_data.MPP_UM_PER_PX),
        "class_names": json.dumps(["mitosis", "atypical"]),
        "output_format": OUTPUT_FORMAT,
        "reinhard_target_lab": json.dumps(manifest["target_lab"]),
        "score_threshold": f"{mitosis_t:.4f}",
        "atypical_threshold": f"{atypical_t:.4f}",
        "candidate_threshold": f"{candidate_threshold:.4f}",
        "training_data_sha256": manifest["data_sha256"],
        "training_seed": str(args.seed),
        "detector_sha256": OnnxRuntimeBackend(args.detector).info.sha256,
    }
    onnx_path = args.out / "model.onnx"
    export_onnx(model, onnx_path, metadata)
    if (args.shared / "amibr").is_dir() and not args.no_mining:
        # Step 5: the detector threshold the second stage starts from, on validation images only.
        from training.candidates import choose_candidate_threshold
        from training.onnx_export import set_metadata

        choice = choose_candidate_threshold(args.detector, onnx_path, args.shared, args.seed)
        set_metadata(onnx_path, {"mitoscope.candidate_threshold": f"{choice.threshold:.4f}"})
        summary["candidate_threshold"] = choice.threshold
        summary["candidate_thresholds_tried"] = choice.rows
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"candidate threshold {choice.threshold} (chosen on validation)")
    print(f"wrote {onnx_path}")
    if args.install:
        from services.detector.triton_repository import main as generate_configs

        installed = args.install / args.version / "model.onnx"
        installed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, installed)
        (args.install / args.version / "summary.json").write_text(json.dumps(summary, indent=1))
        generate_configs([str(args.install)])
        print(f"installed {installed}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
