"""Eager against fused (SDPA) attention, per precision, for queries and for gallery encoding.

    python benchmarks/bench_attention.py [--model URI | --preset NAME] [--device cpu|cuda] [--rounds N]
                                         [--batch N] [--threads N] [--kinds query,reference,gallery]
                                         [--precisions fp32,bf16,bf16-autocast,int8] [--json]

The measurement behind `cir_core.attention.fused_is_faster`. Each setting runs the same
work with transformers' eager attention (the model's only path before) and with torch's
`scaled_dot_product_attention`, alternating which goes first, round by round, so that a
loaded host slows both alike; the report gives each one's median and the median of the
per-round ratios (eager time / fused time: above 1, fused is faster).

- query: one uploaded reference at batch 1 (vision encoder, prompt pass, compose pass);
- reference: a gallery reference at batch 1 (its vision features ready: prompt and compose passes);
- gallery: `--batch` images through the vision encoder and the Q-Former target pass.

Precisions: on a CPU fp32, bf16 (a bf16 copy, as query precision bf16), bf16-autocast (as
gallery precision bf16) and int8 (`cir_core.precision`); on CUDA fp16
(`cir_core.device.place_model`). A `--preset` is built
with random weights (as `bench_real_size.py` builds it), `--model` loads a checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "make the red circle large and move it to the left"
IMPLEMENTATIONS = ("eager", "sdpa")


def force_attention(model, name: str) -> None:
    """Run every call of `model` with transformers' attention `name`, whatever the call asks for."""
    model.vision_model.config._attn_implementation = name
    model.qformer.config._attn_implementation = name


def settings(model, device: torch.device) -> dict:
    """name -> a function making (the model that runs it, the context it runs in, the dtype its attention
    computes in): a copy is made only for a setting that is measured."""
    from cir_core.device import place_model
    from cir_core.precision import int8_copy, query_model

    if device.type == "cuda":
        model.source_fingerprint = "not-needed"  # skips hashing the weights: nothing is indexed
        return {"fp16": lambda: (place_model(model, device), contextlib.nullcontext, torch.float16)}
    return {"fp32": lambda: (model, contextlib.nullcontext, torch.float32),
            "bf16": lambda: (query_model(model, "bf16"), contextlib.nullcontext, torch.bfloat16),
            "bf16-autocast": lambda: (model, lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16),
            "int8": lambda: (int8_copy(model), contextlib.nullcontext, torch.float32)}  # int8 layers compute in fp32


def query_work(model, pixels: torch.Tensor) -> None:
    text = model.tokenize(CAPTION)
    features = model.vision_features(pixels.to(model.query_tokens.dtype))
    model.compose(model.query_prompt(features, text), text)


def reference_work(model, features: torch.Tensor) -> None:
    text = model.tokenize(CAPTION)
    model.compose(model.query_prompt(features.to(model.query_tokens.dtype), text), text)


def gallery_work(model, pixels: torch.Tensor) -> None:
    model.encode_target(pixels)


def timed(work, model, inputs: torch.Tensor, context) -> float:
    cuda = inputs.device.type == "cuda"
    with torch.inference_mode(), context():
        started = time.perf_counter()
        work(model, inputs)
        if cuda:
            torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - started)


def compare(work, model, inputs: torch.Tensor, context, rounds: int) -> dict[str, float]:
    """Median milliseconds of each implementation and the median per-round ratio eager / sdpa."""
    times = {name: [] for name in IMPLEMENTATIONS}
    for number in range(rounds + 1):  # round 0 warms both up
        order = IMPLEMENTATIONS if number % 2 else IMPLEMENTATIONS[::-1]
        for name in order:
            force_attention(model, name)
            elapsed = timed(work, model, inputs, context)
            if number:
                times[name].append(elapsed)
    ratios = [eager / fused for eager, fused in zip(times["eager"], times["sdpa"])]
    return {"eager_ms": round(statistics.median(times["eager"]), 2),
            "sdpa_ms": round(statistics.median(times["sdpa"]), 2),
            "eager_over_sdpa": round(statistics.median(ratios), 3)}


def build(args, device: torch.device):
    if args.model:
        from cir_core.checkpoints import load_model

        return load_model(args.model).eval()
    spec = importlib.util.spec_from_file_location("bench_real_size", ROOT / "benchmarks" / "bench_real_size.py")
    real_size = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_size)
    return real_size.random_model(args.preset, torch.device("cpu"), vocab=args.vocab)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model URI (default: --preset with random weights)")
    parser.add_argument("--preset", default="tiny-test", help="model preset built with random weights")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt for --preset (default: the "
                        "tokenizer package's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per setting and kind")
    parser.add_argument("--batch", type=int, default=64, help="gallery images per encoding batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (an engine request has 1)")
    parser.add_argument("--kinds", default="query,reference,gallery",
                        help="comma-separated: query, reference, gallery")
    parser.add_argument("--precisions", help="comma-separated, of fp32, bf16 (a bf16 copy), bf16-autocast, int8 "
                        "on a CPU, fp16 on CUDA (default: all of the device's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if args.rounds < 1 or args.batch < 1 or not kinds or set(kinds) - {"query", "reference", "gallery"}:
        parser.error("--rounds and --batch must be at least 1; --kinds takes query, reference and gallery")

    from cir_core.attention import fused_is_faster
    from cir_core.device import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
        model = build(args, device)
    except (DeviceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    size = model.config.preprocess.image_size
    generator = torch.Generator().manual_seed(0)
    inputs = {"query": torch.randn(1, 3, size, size, generator=generator).to(device),
              "gallery": torch.randn(args.batch, 3, size, size, generator=generator).to(device)}
    with torch.inference_mode():
        inputs["reference"] = model.to(device).vision_features(inputs["query"])  # (1, T, W), as an index stores them
    works = {"query": query_work, "reference": reference_work, "gallery": gallery_work}
    report = {"model": args.model or f"{args.preset} (random weights)", "device": device.type,
              "threads": torch.get_num_threads() if device.type == "cpu" else None, "rounds": args.rounds,
              "gallery_batch": args.batch, "settings": {}}
    available = settings(model, device)
    chosen = args.precisions.split(",") if args.precisions else list(available)
    if set(chosen) - set(available):
        parser.error(f"--precisions takes {', '.join(available)} on {device.type}")
    for name in chosen:
        encoder, context, dtype = available[name]()
        uses = "sdpa" if fused_is_faster(torch.zeros(1, dtype=dtype, device=device)) else "eager"
        for kind in kinds:
            row = compare(works[kind], encoder, inputs[kind], context, args.rounds)
            row["model_uses"] = uses
            report["settings"][f"{name}, {kind}"] = row
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if key != "settings":
                print(f"{key}: {value}")
        for name, row in report["settings"].items():
            print(f"{name}: eager {row['eager_ms']} ms, sdpa {row['sdpa_ms']} ms, eager/sdpa {row['eager_over_sdpa']}, "
                  f"the model uses {row['model_uses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
