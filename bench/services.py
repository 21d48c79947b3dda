"""Throughput through the services against in-process ONNX Runtime, and the bytes at each hop.

    python -m bench.services [--size-px 6144] [--reps 2]

One synthetic slide is scored (a) by the embedded pipeline with in-process ONNX Runtime and (b)
through the tiler, preprocess, detector (Triton, the wheel's CPU server) and aggregator services
over HTTP on loopback, one batch at a time and with `--in-flight` batches on their way at once
(the jobs' default), alternating, with the same thread budget (ONNX Runtime gets every core in
both: in-process, or inside Triton's Python backend). Reports tiles/s for each, their ratio to
in-process (goal >= 0.8), and the request and response bytes per tile at each hop. Nothing is
asserted.
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

from mitoscope.pipeline import ScoreOptions, score_slide
from mitoscope.slide_files import make_slide
from mitoscope.stack import pipeline_services
from mitoscope.synth import SynthParams
from services.common.files import REPO_ROOT
from services.detector.backends import OnnxRuntimeBackend
from services.detector.detector import ModelDetector
from services.detector.model import DEFAULT_MODEL_NAME
from services.detector.triton_server import TritonServer
from services.gateway.orchestrate import DEFAULT_BATCHES_IN_FLIGHT, ServiceUrls, SlideSession, detect_in_flight

MODEL_REPOSITORY = REPO_ROOT / "model_repository"


def run_services(client: httpx.Client, urls: ServiceUrls, location: str, batch_size: int, in_flight: int) -> int:
    session = SlideSession(client, urls, location, DEFAULT_MODEL_NAME, batch_size=batch_size)
    found = dict(detect_in_flight(session.detect_batch, range(session.batch_count), in_flight))
    session.aggregate([found[i] for i in range(session.batch_count)])
    return session.total_tiles


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.services", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-px", type=int, default=6144)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=150)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_BATCHES_IN_FLIGHT)
    args = parser.parse_args(argv)
    batch = args.batch_size

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
        in_process: list[float] = []
        services: dict[int, list[float]] = {1: [], args.in_flight: []}
        tiles = 0
        with httpx.Client(timeout=600, event_hooks={"response": [count]}) as client:
            run_services(client, urls, "bench.svs", batch, 1)  # warm-up: caches, model load
            score_slide(slides / "bench.svs", root / "warm", detector, ScoreOptions(batch_size=batch))
            traffic.clear()
            for rep in range(args.reps):
                started = time.perf_counter()
                result = score_slide(
                    slides / "bench.svs", root / f"local{rep}", detector, ScoreOptions(batch_size=batch)
                )
                tiles = result["provenance"]["tiles"]["total"]
                in_process.append(tiles / (time.perf_counter() - started))
                for in_flight, rates in services.items():
                    started = time.perf_counter()
                    run_services(client, urls, "bench.svs", batch, in_flight)
                    rates.append(tiles / (time.perf_counter() - started))
        detector.close()

    local = statistics.median(in_process)
    print(f"slide {args.size_px} x {args.size_px} px, {tiles} tissue tiles, batch {batch}, {args.reps} reps\n")
    print("| path | tiles/s (median) | ratio to in-process |\n|---|---|---|")
    print(f"| in-process ONNX Runtime | {local:.1f} | 1.00 |")
    for in_flight, rates in services.items():
        remote = statistics.median(rates)
        print(f"| services over HTTP, Triton, {in_flight} batch(es) in flight | {remote:.1f} | {remote / local:.2f} |")
    print("\n(goal: services >= 0.8 of in-process)\n")
    print("| hop | request bytes/tile | response bytes/tile |\n|---|---|---|")
    per_run = max(args.reps, 1) * max(tiles, 1) * len(services)
    for hop, (sent, received) in sorted(traffic.items()):
        print(f"| {hop} | {sent / per_run:,.0f} | {received / per_run:,.0f} |")


if __name__ == "__main__":
    main()
