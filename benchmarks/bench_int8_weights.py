"""int8 query encoding with one weight scale per matrix against one per output row.

    python benchmarks/bench_int8_weights.py [--model local-dir:checkpoints/shapes-mini] [--queries 50]

Times the composed-query pass (reference pixels + caption -> query vector, batch 1, one
thread, as an engine request) with the linear layers quantized both ways and in fp32,
interleaved query by query so that the host's load hits every setting alike, and prints
p50 latencies with the ratios. `cir_core.precision` uses one scale per output row, which
keeps int8 queries' accuracy close to fp32 (`cir eval shapes --query-precision int8`).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=f"local-dir:{ROOT / 'checkpoints' / 'shapes-mini'}")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args(argv)
    if args.queries < 5:
        parser.error("--queries must be at least 5")
    torch.set_num_threads(1)

    from cir_core.checkpoints import load_model
    from cir_core.precision import int8_copy

    try:
        model = load_model(args.model).float().eval()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = {"fp32": model, "int8, one scale per matrix": int8_copy(model, layers={torch.nn.Linear}),
                "int8, one scale per row (used)": int8_copy(model)}
    generator = torch.Generator().manual_seed(0)
    size = model.config.preprocess.image_size
    times: dict[str, list[float]] = {name: [] for name in settings}
    for number in range(args.queries + 3):  # the first three warm up
        pixels = torch.randn(1, 3, size, size, generator=generator)
        caption = ["make the red circle blue", "remove the small square", "turn it upside down"][number % 3]
        for name, encoder in settings.items():
            started = time.perf_counter()
            encoder.encode_query(pixels, caption)
            if number >= 3:
                times[name].append(1000 * (time.perf_counter() - started))
    p50 = {name: round(statistics.median(values), 2) for name, values in times.items()}
    report = {"model": args.model, "queries": args.queries, "threads": 1, "p50_ms": p50,
              "per_row_over_per_matrix": round(p50["int8, one scale per row (used)"]
                                              / p50["int8, one scale per matrix"], 3),
              "fp32_over_per_row": round(p50["fp32"] / p50["int8, one scale per row (used)"], 2)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
