"""Seeded, resumable recipe for a Faster R-CNN (ResNet-FPN, torchvision) mitosis detector.

    python -m training.train_frcnn --dataset runs/yolo/dataset --out runs/frcnn [--backbone resnet50]

Trains on the same dataset the YOLO recipe builds (`training.yolo_dataset`: Reinhard-normalised
256 px images with YOLO labels), packed four to a 512 px image so training and serving see the
same scale (the model's transform is pinned to 512 px and never resizes). ResNet-18 by default
for CPUs, ResNet-50 (the paper's) for GPU users; no pretrained weights (nothing is downloaded),
so batch norm is trained. Multi-GPU: `torchrun --nproc-per-node N -m training.train_frcnn ...`
(DDP, gloo on CPU, nccl on GPU); one process on CPU works the same.

Each epoch writes `checkpoint.pt` (model, optimiser, epoch), `metrics.jsonl` (loss, validation F1
with MIDOG matching and its best threshold) and, when validation F1 improves, `best.pt`; a rerun
resumes from the checkpoint. `--install` exports ONNX (see `training.onnx_export`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np

from services.common.files import REPO_ROOT
from training.frcnn_model import TILE_PX, build_model
from training.mosaic import pack, split

PROG = "mitoscope train frcnn"  # as invoked through the mitoscope CLI
CELL_PX = 256


def _read_items(dataset_dir: Path, split: str) -> list[tuple[Path, np.ndarray]]:
    items = []
    for image in sorted((dataset_dir / "images" / split).glob("*.png")):
        label = dataset_dir / "labels" / split / f"{image.stem}.txt"
        boxes = []
        for line in label.read_text().splitlines() if label.exists() else []:
            _, xc, yc, w, h = (float(v) for v in line.split())
            boxes.append(
                [(xc - w / 2) * CELL_PX, (yc - h / 2) * CELL_PX, (xc + w / 2) * CELL_PX, (yc + h / 2) * CELL_PX]
            )
        items.append((image, np.asarray(boxes, np.float32).reshape(-1, 4)))
    return items


def metrics_lines(out_dir: Path) -> list[str]:
    path = out_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def mosaics(items: list[tuple[Path, np.ndarray]], seed: int, epoch: int) -> list[list[int]]:
    """Groups of four item indices per 512 px training image, reshuffled each epoch (seeded)."""
    order = list(range(len(items)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [order[i : i + 4] for i in range(0, len(order), 4)]


def validation_f1(model, items: list[tuple[Path, np.ndarray]], device) -> tuple[float, float]:
    """Best F1 over score thresholds on the validation tiles (MIDOG matching), and that threshold."""
    import cv2
    import torch

    from mitoscope.evaluation import MIDOG_MATCH_RADIUS_UM, best_threshold, pr_curve

    scored = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), 4):
            group = items[start : start + 4]
            canvas, offsets = pack(
                [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path, _ in group], TILE_PX
            )
            image = torch.from_numpy(canvas).permute(2, 0, 1).float().div(255.0).to(device)
            found = model([image])[0]
            per_cell = split(found["boxes"].cpu().numpy(), found["scores"].cpu().numpy(), offsets, CELL_PX)
            for dets, (_, truth_boxes) in zip(per_cell, group, strict=True):
                scored.append((dets, [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in truth_boxes]))
    curve = pr_curve(scored, MIDOG_MATCH_RADIUS_UM / 0.25, [round(t, 2) for t in np.arange(0.05, 0.96, 0.05)])
    threshold, counts = best_threshold(curve)
    return counts.f1, threshold


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=REPO_ROOT / "runs" / "yolo" / "dataset")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "frcnn")
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2, help="512 px images per step (each holds four tiles)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training tiles (smoke tests)")
    parser.add_argument("--install", type=Path, default=None, help="model folder to export the ONNX into")
    args = parser.parse_args(argv)

    import cv2
    import torch
    import torch.distributed as dist

    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(False)

    items = _read_items(args.dataset, "train")
    val_items = _read_items(args.dataset, "val")
    if args.limit:
        items, val_items = items[: args.limit], val_items[: args.limit]
    if not items:
        raise SystemExit(f"{args.dataset}: no training images (build it with python -m training.train_yolo)")
    model = build_model(args.backbone).to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = args.out / "checkpoint.pt"
    start_epoch = 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        (model.module if distributed else model).load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch = state["epoch"] + 1
        print(f"resuming after epoch {state['epoch'] + 1} from {checkpoint_path}")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=max(args.epochs, 1), last_epoch=start_epoch - 1
    )
    if rank == 0:
        (args.out / "config.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))

    def load(indices: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cells, cell_boxes_list = [], []
        rng = random.Random(sum(indices))
        for index in indices:
            path, cell_boxes = items[index]
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            cell_boxes = cell_boxes.copy()
            if rng.random() < 0.5:  # horizontal flip (the paper's augmentation)
                rgb = rgb[:, ::-1]
                cell_boxes[:, [0, 2]] = CELL_PX - cell_boxes[:, [2, 0]]
            if rng.random() < 0.5:  # vertical flip
                rgb = rgb[::-1]
                cell_boxes[:, [1, 3]] = CELL_PX - cell_boxes[:, [3, 1]]
            cells.append(rgb)
            cell_boxes_list.append(cell_boxes)
        canvas, offsets = pack(cells, TILE_PX)
        boxes = [b + np.array([x, y, x, y], np.float32) for b, (x, y) in zip(cell_boxes_list, offsets, strict=True)]
        all_boxes = torch.from_numpy(np.concatenate(boxes)).float()
        image = torch.from_numpy(canvas).permute(2, 0, 1).float().div(255.0)
        target = {"boxes": all_boxes, "labels": torch.ones(len(all_boxes), dtype=torch.int64)}
        return image.to(device), {k: v.to(device) for k, v in target.items()}

    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        model.train()
        groups = mosaics(items, args.seed, epoch)[rank::world]
        losses = []
        for step in range(0, len(groups), args.batch):
            batch = [load(g) for g in groups[step : step + args.batch]]
            loss_dict = model([b[0] for b in batch], [b[1] for b in batch])
            loss = sum(loss_dict.values())
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimiser.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        if rank == 0:
            inner = model.module if distributed else model
            val_f1, val_threshold = validation_f1(inner, val_items, device)
            best_so_far = max((json.loads(line)["val_f1"] for line in metrics_lines(args.out)), default=-1.0)
            record = {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "val_f1": round(val_f1, 4),
                "val_threshold": val_threshold,
                "seconds": round(time.time() - started, 1),
                "lr": optimiser.param_groups[0]["lr"],
            }
            with (args.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            state = {
                "model": inner.state_dict(),
                "optimiser": optimiser.state_dict(),
                "epoch": epoch,
                "backbone": args.backbone,
                "val_f1": val_f1,
                "val_threshold": val_threshold,
            }
            torch.save(state, checkpoint_path)
            if val_f1 > best_so_far:  # the checkpoint the export uses
                torch.save(state, args.out / "best.pt")
            print(json.dumps(record), flush=True)
    if distributed:
        dist.destroy_process_group()
    if rank == 0 and args.install is not None:
        from training.dataset_hash import dataset_sha256
        from training.onnx_export import export_frcnn

        manifest = json.loads((args.dataset / "manifest.json").read_text())
        records = [json.loads(line) for line in metrics_lines(args.out)]
        best = max(records, key=lambda r: r["val_f1"])
        export_frcnn(
            args.out / "best.pt",
            args.install / "1" / "model.onnx",
            target_lab=manifest["target_lab"],
            extra={
                "train_seconds": f"{sum(r['seconds'] for r in records):.0f}",
                "epochs": str(len(records)),
                "recipe": "python -m training.train_frcnn",
                "data": json.dumps(manifest["counts"]),
                "training_data_sha256": dataset_sha256(args.dataset),
            },
        )
        print(f"installed {args.install / '1' / 'model.onnx'} (epoch {best['epoch']}, validation F1 {best['val_f1']})")


if __name__ == "__main__":
    main()
