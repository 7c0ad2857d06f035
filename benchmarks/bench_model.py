"""Model speed on this machine: gallery encoding throughput and engine query latency.

    python benchmarks/bench_model.py [--model local-dir:checkpoints/shapes-mini] [--gallery assets/shapes]

Prints, measured in one run:
- gallery encoding in images/s at batch 64 (vision encoder + Q-Former query pass, images
  preprocessed beforehand), fp32 and bf16 autocast side by side, with the ratio;
- engine query latency (reference image file + caption -> top-50 of the gallery index),
  p50/p95 over the benchmark's test queries, with the per-stage breakdown, against the
  naive way (encode the query, one matmul over every gallery vector, max, sort).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def gallery_throughput(model, pixels: torch.Tensor, batch: int, bf16: bool, repeats: int = 3) -> float:
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with context:
        model.encode_target(pixels[:batch])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(pixels), batch):
                model.encode_target(pixels[i:i + batch])
            best = min(best, time.perf_counter() - start)
    return len(pixels) / best


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=f"local-dir:{ROOT / 'checkpoints' / 'shapes-mini'}")
    parser.add_argument("--gallery", default=str(ROOT / "assets" / "shapes"), help="shapes benchmark folder")
    parser.add_argument("--images", type=int, default=1024, help="gallery images timed for throughput")
    parser.add_argument("--queries", type=int, default=100, help="timed engine queries")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from PIL import Image

    from cir_core.checkpoints import load_model
    from cir_core.data.shapes import read_shapes_split
    from cir_core.engine import Engine
    from cir_core.transforms import ImageTransform

    model = load_model(args.model)
    split = read_shapes_split(args.gallery, "test")
    transform = ImageTransform(model.config.preprocess)
    ids = split.gallery[:args.images]
    pixels = torch.stack([transform(Image.open(split.path(i))) for i in ids])
    fp32 = gallery_throughput(model, pixels, 64, bf16=False)
    bf16 = gallery_throughput(model, pixels, 64, bf16=True)

    engine = Engine.from_uris(args.model, gallery_data=args.gallery)
    queries = split.triplets[:args.queries]
    engine.search(str(split.path(queries[0].reference)), queries[0].caption, k=50)  # warm-up
    totals, stages, naive = [], [], []
    gallery = torch.from_numpy(engine.index.vectors(range(len(engine.index)))).float() \
        if hasattr(engine.index, "vectors") else None
    for triplet in queries:
        path = str(split.path(triplet.reference))
        start = time.perf_counter()
        result = engine.search(path, triplet.caption, k=50)
        totals.append(1000 * (time.perf_counter() - start))
        stages.append(result.timings)
        if gallery is not None:
            start = time.perf_counter()
            with torch.inference_mode():
                query = model.encode_query(transform(Image.open(path))[None], [triplet.caption]).query
                model.score(query, gallery)[0].topk(50)
            naive.append(1000 * (time.perf_counter() - start))
    report = {
        "model": args.model, "threads": args.threads, "gallery_images": len(engine.index),
        "gallery_encoding_images_per_s": {"fp32": round(fp32, 1), "bf16": round(bf16, 1),
                                          "bf16_over_fp32": round(bf16 / fp32, 2)},
        "engine_query_ms": {"p50": round(statistics.median(totals), 2), "p95": round(percentile(totals, 0.95), 2),
                            "stages_p50": {name: round(statistics.median(getattr(s, name) for s in stages), 2)
                                           for name in ("image_encode_ms", "prompt_ms", "compose_ms", "search_ms")}},
    }
    if naive:
        report["naive_query_ms"] = {"p50": round(statistics.median(naive), 2),
                                    "engine_speedup": round(statistics.median(naive) / statistics.median(totals), 2)}
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
