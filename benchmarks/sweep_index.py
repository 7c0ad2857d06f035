"""Search-time settings of an approximate gallery index: latency and recall@10 per setting.

    python benchmarks/sweep_index.py --index DIR --queries QUERIES.npy [--settings 16:400,384:200]

Loads an ivfpq/hnsw index folder once (e.g. one kept by `cir bench index --work-dir W`, whose
queries are W/queries_<N>.npy), computes the exact top 10 of every query by scanning the
fp16 store, then for each `nprobe:candidates` setting times single queries on one thread
and reports p50/p95 latency and recall@10 against the exact ranking, in one table. Settings
are changed in memory only; the index folder is not modified.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import faiss
import numpy as np
import torch

K = 10


def parse_settings(text: str) -> list[tuple[int, int]]:
    """'16:400,384:200' -> [(16, 400), (384, 200)]; ValueError with the offending part otherwise."""
    settings = []
    for part in text.split(","):
        try:
            nprobe, candidates = (int(value) for value in part.split(":"))
        except ValueError:
            raise ValueError(f"--settings takes nprobe:candidates pairs such as 16:400, got {part!r}") from None
        if nprobe < 1 or candidates < 1:
            raise ValueError(f"--settings values must be at least 1, got {part!r}")
        settings.append((nprobe, candidates))
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="an ivfpq or hnsw index folder")
    parser.add_argument("--queries", required=True, help="(B, D) float32 queries as .npy")
    parser.add_argument("--settings", default="16:400,64:400,128:400,256:200,384:200,512:200",
                        help="comma-separated nprobe:candidates pairs (nprobe is ignored by hnsw)")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings)
    except ValueError as error:
        parser.error(str(error))

    from cir_core.index import GalleryIndex, GalleryIndexError

    try:
        index = GalleryIndex.load(args.index, verify=False)
    except (GalleryIndexError, FileNotFoundError) as error:
        parser.error(f"cannot load {args.index}: {error}")
    if index.kind == "flat":
        parser.error("a flat index is exact; nothing to sweep")
    queries = np.load(args.queries).astype(np.float32)
    started = time.perf_counter()
    truth = [set(np.argsort(-scores, kind="stable")[:K].tolist()) for scores in index.score_all(queries)]
    print(f"exact top {K} of {len(queries)} queries over {index.count:,} images in {time.perf_counter() - started:.0f} s")

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    print(f"\n| nprobe | candidates | p50 ms | p95 ms | recall@{K} |\n|---:|---:|---:|---:|---:|")
    for nprobe, candidates in settings:
        index.set_search_params(nprobe=nprobe, candidates=candidates)
        index.search(queries[0], K)  # warm-up
        latencies, recalls = [], []
        for query, exact in zip(queries, truth):
            started = time.perf_counter()
            hits = index.search(query, K)
            latencies.append(1000 * (time.perf_counter() - started))
            recalls.append(len({hit.row for hit in hits} & exact) / K)
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"| {nprobe} | {candidates} | {p50:.1f} | {p95:.1f} | {np.mean(recalls):.3f} |", flush=True)
    print(f"\n(one thread, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
