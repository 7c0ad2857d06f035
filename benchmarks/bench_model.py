"""Model speed on this machine: gallery encoding throughput and engine query latency.

    python benchmarks/bench_model.py [--model local-dir:checkpoints/shapes-mini] [--gallery assets/shapes]

Prints, measured in one run:
- gallery encoding in images/s at batch 64 (vision encoder + Q-Former query pass, images
  preprocessed beforehand), fp32, bf16 autocast and int8 (`cir build-index --precision`)
  side by side, with the ratios;
- engine query latency (reference image file + caption -> top-50 of the gallery index),
  p50/p95 over the benchmark's test queries, with the per-stage breakdown, for six engine
  settings side by side (one thread per request in fp32, the default; two threads; one and
  two threads with the query encoded in bf16, and in int8), each with its speed-up over the
  default and how often its top-1 and top-50 agree with the default's; and the naive way
  (encode the query, one matmul over every gallery vector, max, sort).
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


def gallery_throughput(model, pixels: torch.Tensor, batch: int, precision: str, repeats: int = 3) -> float:
    from cir_core.precision import gallery_encoder

    with torch.inference_mode(), gallery_encoder(model, precision) as encoder:
        encoder.encode_target(pixels[:batch])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(pixels), batch):
                encoder.encode_target(pixels[i:i + batch])
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
    from cir_core.data.registry import open_source
    from cir_core.engine import Engine, limit_threads
    from cir_core.transforms import ImageTransform

    model = load_model(args.model)
    split = read_shapes_split(args.gallery, "test")
    transform = ImageTransform(model.config.preprocess)
    ids = split.gallery[:args.images]
    pixels = torch.stack([transform(Image.open(split.path(i))) for i in ids])
    throughput = {precision: gallery_throughput(model, pixels, 64, precision) for precision in ("fp32", "bf16", "int8")}

    base = Engine.from_uris(args.model, source=open_source("shapes", args.gallery))
    queries = split.triplets[:args.queries]
    gallery = torch.from_numpy(base.index.vectors(range(len(base.index)))).float()
    report = {
        "model": args.model, "gallery_images": len(base.index), "encoding_threads": args.threads,
        "gallery_encoding_images_per_s": {
            **{precision: round(rate, 1) for precision, rate in throughput.items()},
            "bf16_over_fp32": round(throughput["bf16"] / throughput["fp32"], 2),
            "int8_over_bf16": round(throughput["int8"] / throughput["bf16"], 2)},
        "engine_query_ms": {},
    }
    reference_hits, reference_p50 = None, None
    # Engine settings side by side: the default (one thread per request, fp32), two threads,
    # and one or two threads with the query's encoder passes in bf16 or int8.
    settings = [(f"{threads} thread{'s' if threads > 1 else ''}, {precision} queries", threads, precision)
                for precision in ("bf16", "int8") for threads in (1, 2)]
    for name, threads, precision in [("1 thread, fp32 (default)", 1, "fp32"), ("2 threads, fp32", 2, "fp32")] + settings:
        engine = Engine(base.model, base.index, num_threads=threads, query_precision=precision)
        engine.search(str(split.path(queries[0].reference)), queries[0].caption, k=50)  # warm-up
        totals, stages, hits = [], [], []
        for triplet in queries:
            path = str(split.path(triplet.reference))
            start = time.perf_counter()
            result = engine.search(path, triplet.caption, k=50)
            totals.append(1000 * (time.perf_counter() - start))
            stages.append(result.timings)
            hits.append([hit.id for hit in result.hits])
        p50 = statistics.median(totals)
        row = {"p50": round(p50, 2), "p95": round(percentile(totals, 0.95), 2),
               "stages_p50": {stage: round(statistics.median(getattr(s, stage) for s in stages), 2)
                              for stage in ("image_encode_ms", "prompt_ms", "compose_ms", "search_ms")}}
        if reference_hits is None:
            reference_hits, reference_p50 = hits, p50
        else:
            row["speedup_vs_default"] = round(reference_p50 / p50, 2)
            row["same_top1_as_default"] = round(sum(a[0] == b[0] for a, b in zip(hits, reference_hits)) / len(hits), 3)
            row["top50_overlap_with_default"] = round(
                sum(len(set(a) & set(b)) for a, b in zip(hits, reference_hits)) / (50 * len(hits)), 3)
        report["engine_query_ms"][name] = row
    limit_threads(1)
    naive = []
    for triplet in queries:
        path = str(split.path(triplet.reference))
        start = time.perf_counter()
        with torch.inference_mode():
            query = model.encode_query(transform(Image.open(path))[None], [triplet.caption]).query
            model.score(query, gallery)[0].topk(50)
        naive.append(1000 * (time.perf_counter() - start))
    report["naive_query_ms_1_thread"] = {"p50": round(statistics.median(naive), 2),
                                         "default_engine_speedup": round(statistics.median(naive) / reference_p50, 2)}
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
