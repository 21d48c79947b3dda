"""Throughput through the services against in-process ONNX Runtime, and the bytes at each hop.

    python -m bench.services [--size-px 6144] [--reps 2]

One synthetic slide is scored (a) by the embedded pipeline with in-process ONNX Runtime and (b)
through the tiler, preprocess, detector (Triton, the wheel's CPU server) and aggregator services
over HTTP on loopback, alternating, with the same thread budget (ONNX Runtime gets every core in
both: in-process, or inside Triton's Python backend). Reports tiles/s for each, their ratio
(goal >= 0.8), and the request and response bytes per tile at each hop. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import httpx

from mitoscope.pipeline import REPO_ROOT, ScoreOptions, score_slide
from mitoscope.stack import pipeline_services
from mitoscope.synth import SynthParams, make_slide
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from services.detector.model import DEFAULT_MODEL_NAME
from services.detector.triton_server import TritonServer
from services.gateway.orchestrate import ServiceUrls, SlideSession

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
BATCH_SIZE = 150


def run_services(client: httpx.Client, urls: ServiceUrls, location: str) -> int:
    session = SlideSession(client, urls, location, DEFAULT_MODEL_NAME, batch_size=BATCH_SIZE)
    detections = [session.detect_batch(i) for i in range(session.batch_count)]
    session.aggregate(detections)
    return session.total_tiles


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.services", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-px", type=int, default=6144)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-services-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        slides = root / "slides"
        slides.mkdir()
        make_slide(slides / "bench.svs", SynthParams(args.size_px, args.size_px, seed=args.seed))
        triton = stack.enter_context(
            TritonServer(MODEL_REPOSITORY, REPO_ROOT / ".venv-triton", root / "triton", log_path=root / "triton.log")
        )
        urls = pipeline_services(
            stack, slides, root, {"DETECTOR_BACKEND": "triton", "DETECTOR_TRITON_URL": triton.grpc_url}
        )
        traffic: dict[str, list[int]] = defaultdict(lambda: [0, 0])

        def count(response: httpx.Response) -> None:
            response.read()
            path = response.request.url.path
            hop = path.rsplit("/", 1)[-1] if path.startswith("/v1/") else path
            traffic[hop][0] += len(response.request.content)
            traffic[hop][1] += len(response.content)

        detector = ModelDetector(OnnxRuntimeBackend(MODEL_REPOSITORY / DEFAULT_MODEL_NAME / "1" / "model.onnx"))
        in_process, services = [], []
        tiles = 0
        with httpx.Client(timeout=600, event_hooks={"response": [count]}) as client:
            run_services(client, urls, "bench.svs")  # warm-up: caches, model load
            score_slide(slides / "bench.svs", root / "warm", detector, ScoreOptions(batch_size=BATCH_SIZE))
            traffic.clear()
            for rep in range(args.reps):
                started = time.perf_counter()
                result = score_slide(
                    slides / "bench.svs", root / f"local{rep}", detector, ScoreOptions(batch_size=BATCH_SIZE)
                )
                tiles = result["provenance"]["tiles"]["total"]
                in_process.append(tiles / (time.perf_counter() - started))
                started = time.perf_counter()
                run_services(client, urls, "bench.svs")
                services.append(tiles / (time.perf_counter() - started))
        detector.close()

    local, remote = statistics.median(in_process), statistics.median(services)
    print(f"slide {args.size_px} x {args.size_px} px, {tiles} tissue tiles, batch {BATCH_SIZE}, {args.reps} reps\n")
    print("| path | tiles/s (median) |\n|---|---|")
    print(f"| in-process ONNX Runtime | {local:.1f} |\n| services over HTTP, Triton | {remote:.1f} |")
    print(f"\nratio services / in-process: {remote / local:.2f} (goal >= 0.8)\n")
    print("| hop | request bytes/tile | response bytes/tile |\n|---|---|---|")
    per_run = max(args.reps, 1) * max(tiles, 1)
    for hop, (sent, received) in sorted(traffic.items()):
        print(f"| {hop} | {sent / per_run:,.0f} | {received / per_run:,.0f} |")


if __name__ == "__main__":
    main()
