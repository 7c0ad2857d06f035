"""`cir bench TARGET`: measured benchmarks (`index`: gallery index vs the naive way on synthetic vectors)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from cir_core.cli import CommandError


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its measured table",
                                   description="Run a benchmark and print its measured table.")
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    index = targets.add_parser(
        "index", help="gallery index vs one matmul over all vectors: build time, memory, latency, recall@10",
        description="Synthetic SPRC-like galleries (Q unit vectors per image with cluster structure). For each size, "
                    "compares the naive way (one matmul over all N*Q vectors, max per image) with GalleryIndex kinds: "
                    "build time, memory, p50/p95 single-query latency, recall@10 against the exact ranking.")
    index.add_argument("--sizes", default="10000", help="comma-separated gallery sizes (default 10000; 1000000 takes "
                                                         "minutes and ~18 GB of disk)")
    index.add_argument("--kinds", default="flat,ivfpq", help="index kinds to compare (flat,ivfpq,hnsw)")
    index.add_argument("--queries", type=int, default=100, help="timed queries per method")
    index.add_argument("--num-query-tokens", type=int, default=32, help="Q vectors per image")
    index.add_argument("--dim", type=int, default=256, help="D, vector width")
    index.add_argument("--threads", type=int, default=1, help="torch/faiss threads while timing queries")
    index.add_argument("--candidates", type=int, help="approximate kinds: images re-scored exactly per query")
    index.add_argument("--nprobe", type=int, help="ivfpq: lists visited per query")
    index.add_argument("--nlist", type=int, help="ivfpq: IVF lists")
    index.add_argument("--in-process", action="store_true",
                       help="time queries in this process (faster start; peak RSS then includes the benchmark itself)")
    index.add_argument("--work-dir", help="keep the built indexes here (default: a temporary folder, removed)")
    index.add_argument("--json", action="store_true", help="print the rows as JSON")
    index.set_defaults(handler=run_index)


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CommandError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise CommandError(f"{option} needs positive integers, got {text!r}")
    return values


def run_index(args: argparse.Namespace) -> int:
    from cir_core.index_store import IndexParams

    from cir_core import index_benchmark as harness

    overrides = {name: getattr(args, name) for name in ("candidates", "nprobe", "nlist") if getattr(args, name) is not None}
    config = harness.IndexBenchConfig(
        sizes=_int_list(args.sizes, "--sizes"), kinds=tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip()),
        num_query_tokens=args.num_query_tokens, dim=args.dim, queries=args.queries, threads=args.threads,
        fresh_process=not args.in_process, params=IndexParams(**overrides), work_dir=Path(args.work_dir) if args.work_dir else None)
    rows = harness.run_index_benchmark(config)
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    else:
        print(harness.format_table(rows, config.k))
        print(f"(Q={config.num_query_tokens}, D={config.dim}, {config.queries} queries, {config.threads} thread(s), "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return 0
