"""Gallery encoding with different numbers of reader threads, side by side.

    python benchmarks/bench_gallery_reading.py [--model URI | --preset NAME] [--images FOLDER] [--count N]
                                               [--workers 1,2] [--rounds N] [--batch N] [--threads N]
                                               [--device auto|cpu|cuda] [--json]

Images per second through an index build's two stages, reading (decode, preprocess, on a
GPU page-locked fp16 pixels) and encoding (vision encoder + Q-Former target pass), as
`cir_core.index_build.encode_batches` runs them for an engine: the model placed on the
device as an engine places it, gallery precision "auto", `--threads` torch threads (an
engine's one by default). Each round encodes the same images once per reader count, in
alternating order, so that a loaded host slows every count alike; the report gives each
count's median images/s and the median of the per-round ratios to the first count.

`--images` is a folder of images (its first `--count` files, sorted); without it, a stand-in
folder of random PNGs as `bench_real_size.py` writes them. `--preset` builds random weights.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]


def real_size_module():
    """benchmarks/bench_real_size.py, for its random-weight models and stand-in images."""
    spec = importlib.util.spec_from_file_location("bench_real_size", ROOT / "benchmarks" / "bench_real_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images_per_second(model, batches, workers: int) -> float:
    from cir_core.index_build import encode_batches

    started = time.perf_counter()
    count = sum(len(batch.read.kept) for batch in encode_batches(model, batches, workers=workers))
    return count / (time.perf_counter() - started)


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise ValueError(f"--workers takes distinct comma-separated positive integers, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model URI (default: --preset with random weights)")
    parser.add_argument("--preset", default="tiny-test", help="model preset built with random weights")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt for --preset")
    parser.add_argument("--images", type=Path, help="a folder of images (default: random stand-in PNGs)")
    parser.add_argument("--count", type=int, default=256, help="images encoded per round and reader count")
    parser.add_argument("--workers", default="1,2", help="comma-separated reader thread counts to compare")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds (one more warms up)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (an engine's build uses 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (an engine has 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        counts = parse_counts(args.workers)
    except ValueError as error:
        parser.error(str(error))
    if args.count < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--count, --rounds and --batch must be at least 1")

    from cir_core.checkpoints import load_model
    from cir_core.data.spec import GalleryItem
    from cir_core.device import DeviceError, limit_threads, place_model, resolve_device
    from cir_core.index_build import items_from_images
    from cir_core.precision import gallery_encoder, resolve_gallery_precision

    real_size = real_size_module()
    try:
        device = resolve_device(args.device)
        items = items_from_images(args.images)[:args.count] if args.images else None
        model = (load_model(args.model) if args.model
                 else real_size.random_model(args.preset, torch.device("cpu"), vocab=args.vocab))
    except (DeviceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    limit_threads(args.threads)
    model.source_fingerprint = "not-needed"  # skips hashing the weights on a GPU: nothing is indexed
    model = place_model(model, device)
    rates: dict[int, list[float]] = {count: [] for count in counts}
    with tempfile.TemporaryDirectory(prefix="bench-gallery-reading-") as folder:
        if items is None:
            paths = real_size.stand_in_images(Path(folder), args.count)
            items = [GalleryItem(id=path.name, path=str(path)) for path in paths]
        batches = [items[start:start + args.batch] for start in range(0, len(items), args.batch)]
        with gallery_encoder(model, "auto") as encoder:
            for number in range(args.rounds + 1):  # round 0 warms up
                for workers in counts if number % 2 else counts[::-1]:
                    rate = images_per_second(encoder, batches, workers)
                    if number:
                        rates[workers].append(rate)
    first = counts[0]
    report = {
        "model": args.model or f"{args.preset} (random weights)", "device": device.type,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "precision": resolve_gallery_precision(model, "auto"), "files": len(items), "batch": args.batch,
        "rounds": args.rounds,
        "images_per_s": {workers: round(statistics.median(values), 1) for workers, values in rates.items()},
        f"ratio_to_{first}_reader": {workers: round(statistics.median(b / a for a, b in zip(rates[first], values)), 3)
                                     for workers, values in rates.items() if workers != first},
        "per_round_images_per_s": {workers: [round(value, 1) for value in values] for workers, values in rates.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
