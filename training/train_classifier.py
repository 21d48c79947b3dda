"""Train the second stage: a small crop classifier, mitosis vs look-alike and atypical vs normal.

    mitoscope train classifier --shared ../shared/data --out runs/classifier \\
        --detector model_repository/yolov5n_mitosis/1/model.onnx --install model_repository/mitosis_classifier

Steps, each skipped when its output exists (so an interrupted run resumes where it stopped):
1. the sample set (`training/classifier_data.py`), normalised to the detector's Reinhard target
   (read from the detector ONNX) and with its calls on negative images mined as hard negatives;
2. training from scratch, seeded, a checkpoint per epoch (`last.pt`, resumed; `best.pt`);
3. thresholds chosen on the validation split: the mitosis threshold is the highest whose
   validation recall is at least `--target-recall`, the atypical one maximises balanced accuracy;
4. the test split reported per source, then the ONNX export with its metadata, installed with its
   Triton configs when `--install` is given.

The network sees an 80 px crop at 0.25 µm/px (20 µm, a whole figure with some context); a
stride-2 stem makes it look at 0.5 µm/px, which also makes 20x scans look like 40x ones.
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

import cv2
import numpy as np
import numpy.typing as npt

CROP_PX = 80
MAX_SHIFT_PX = 8  # positives' centres are known to a few px; detector boxes are off by as much
NEGATIVES_PER_POSITIVE = 3  # each epoch draws this many negatives per positive, afresh
HARD_WEIGHT = 8.0  # a negative the previous round called certain is drawn up to 9x as often
DEFAULT_EPOCHS = 24
DEFAULT_TARGET_RECALL = 0.97
MODEL_NAME = "mitosis_classifier"
PROG = "mitoscope train classifier"  # as invoked through the mitoscope CLI
OUTPUT_FORMAT = "mitosis_atypical_probabilities"


def augment(sample: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """One training view: shift, rotation/flip, 20x simulation, blur, JPEG, colour, mirrored edge."""
    size = sample.shape[0]
    margin = (size - CROP_PX) // 2
    dx, dy = rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, size=2)
    x0, y0 = margin + int(dx), margin + int(dy)
    crop = np.ascontiguousarray(np.rot90(sample[y0 : y0 + CROP_PX, x0 : x0 + CROP_PX], int(rng.integers(4))))
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
    if rng.random() < 0.35:  # a 20x (0.5 µm/px) scan resampled to 0.25 µm/px
        factor = rng.uniform(1.6, 2.4)
        small = max(8, round(CROP_PX / factor))
        crop = cv2.resize(cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA), (CROP_PX, CROP_PX))
    if rng.random() < 0.25:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.4, 1.4))
    if rng.random() < 0.3:
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 92))])
        crop = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else crop
    if rng.random() < 0.8:  # residual stain variation after Reinhard
        gain = rng.uniform(0.88, 1.12, size=3) * rng.uniform(0.9, 1.1)
        bias = rng.uniform(-14, 14, size=3)
        crop = np.clip(crop.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    if rng.random() < 0.15:  # as near a slide or crop edge: mirrored beyond a line
        depth = int(rng.integers(4, 30))
        crop = np.ascontiguousarray(np.rot90(crop, int(rng.integers(4))))
        crop[:depth] = crop[2 * depth - 1 : depth - 1 : -1][:depth]
    return crop


def build_network() -> Any:
    import torch
    from torch import nn

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    class CropNet(nn.Module):
        """uint8 NHWC crops in, two logits out: mitosis, atypical (the latter read only for mitoses)."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(inplace=True),
                block(16, 32),
                nn.MaxPool2d(2),
                block(32, 64),
                nn.MaxPool2d(2),
                block(64, 128),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Dropout(0.2),
            )
            self.head = nn.Linear(128, 2)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float() / 255.0
            return self.head(self.features(x))

    return CropNet()


def _centre(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    m = (images.shape[1] - CROP_PX) // 2
    return np.ascontiguousarray(images[:, m : m + CROP_PX, m : m + CROP_PX])


def with_views(net: Any) -> Any:
    """`net` answering probabilities averaged over four views of each crop (as it is, mirrored,
    flipped, both): a figure has no orientation, and one view's noise should not decide a call.
    The thresholds are chosen with, and the ONNX graph exported with, exactly this."""
    import torch

    class FourViews(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:  # uint8 NHWC
            n = images.shape[0]
            views = torch.cat([images, images.flip(2), images.flip(1), images.flip(1).flip(2)])  # one batch
            logits = self.inner(views).reshape(4, n, -1).mean(dim=0)
            return torch.sigmoid(logits)

    return FourViews(net).eval()


def predict(model: Any, images: npt.NDArray[np.uint8], batch: int = 512) -> npt.NDArray[np.float32]:
    """Probabilities (n, 2) for the centre crops, as the exported model answers them."""
    import torch

    served = with_views(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(served(torch.from_numpy(_centre(images[i : i + batch]))).numpy())
    return np.concatenate(out).astype(np.float32)


def hardness(model_path: Path, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """A previous round's mitosis probability for each sample (its centre crop): the mining signal."""
    from services.detector.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model_path)
    out = [backend.infer(_centre(images[i : i + 1024]))[:, 0] for i in range(0, len(images), 1024)]
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
        score = _validation_score(probs, data["is_mitosis"][val_idx], data["atypical"][val_idx])
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


def _validation_score(probs: npt.NDArray[np.float32], is_mitosis: npt.NDArray[Any], atypical: Any) -> float:
    """Average precision of the mitosis output, plus a little of the atypia AUC as a tie-breaker."""
    return average_precision(probs[:, 0], is_mitosis) + 0.1 * auc(probs[is_mitosis == 1, 1], atypical[is_mitosis == 1])


def average_precision(scores: npt.NDArray[np.float32], labels: npt.NDArray[Any]) -> float:
    order = np.argsort(-scores)
    hits = labels[order] == 1
    if not hits.any():
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def auc(scores: npt.NDArray[np.float32], labels: npt.NDArray[Any]) -> float:
    known = labels >= 0
    pos, neg = scores[known & (labels == 1)], scores[known & (labels == 0)]
    if not len(pos) or not len(neg):
        return 0.0
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def choose_thresholds(probs: npt.NDArray[np.float32], is_mitosis: Any, atypical: Any, target_recall: float):
    positives = np.sort(probs[is_mitosis == 1, 0])
    # The highest threshold that keeps at least target_recall of the validation mitoses.
    k = int(np.floor((1 - target_recall) * len(positives)))
    mitosis_threshold = float(positives[k]) if len(positives) else 0.5
    known = (is_mitosis == 1) & (atypical >= 0)
    best_t, best_bacc = 0.5, -1.0
    for t in np.linspace(0.05, 0.95, 91):
        bacc = balanced_accuracy(probs[known, 1] >= t, atypical[known] == 1)
        if bacc > best_bacc:
            best_t, best_bacc = float(t), bacc
    return mitosis_threshold, best_t


def balanced_accuracy(predicted: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    if not truth.any() or truth.all():
        return 0.0
    return float((predicted[truth].mean() + (~predicted[~truth]).mean()) / 2)


def report(probs, data, idx, mitosis_t: float, atypical_t: float) -> dict[str, Any]:
    """Per source of the split: positives kept (recall), negatives called (false-call rate)."""
    out: dict[str, Any] = {}
    sources = np.array([s.split(":")[0] for s in data["source"][idx]])
    called = probs[:, 0] >= mitosis_t
    for source in sorted(set(sources)):
        mask = sources == source
        pos = mask & (data["is_mitosis"][idx] == 1)
        neg = mask & (data["is_mitosis"][idx] == 0)
        entry: dict[str, Any] = {"positives": int(pos.sum()), "negatives": int(neg.sum())}
        if pos.any():
            entry["recall"] = round(float(called[pos].mean()), 4)
        if neg.any():
            entry["false_calls_per_100_negatives"] = round(100 * float(called[neg].mean()), 2)
        known = pos & (data["atypical"][idx] >= 0)
        if known.any():
            entry["atypical_balanced_accuracy"] = round(
                balanced_accuracy(probs[known, 1] >= atypical_t, data["atypical"][idx][known] == 1), 4
            )
            entry["atypical_auc"] = round(auc(probs[known, 1], data["atypical"][idx][known]), 4)
        out[source] = entry
    return out


def export_onnx(model: Any, path: Path, metadata: dict[str, str]) -> None:
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.onnx")
    torch.onnx.export(
        with_views(model),
        (torch.zeros((1, CROP_PX, CROP_PX, 3), dtype=torch.uint8),),
        str(partial),
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    graph = onnx.load(str(partial))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = f"mitoscope.{key}", value
    onnx.save(graph, str(partial))
    partial.rename(path)


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
