"""Where a training step's time goes: look-alike rendering, pixel preparation, the step itself.

    python benchmarks/bench_train_step.py [--config configs/shapes_mini.json] [--steps 8] [--key=value ...]

Builds the trainer of a recipe (overrides exactly as `cir train` takes them:
`--max_steps=1000`), runs two warm-up steps, then for each timed step draws a batch
and times, one after the other: rendering its look-alike scenes, turning its images into
normalised pixels, and a whole `train_step` (which draws, renders and prepares its own
batch, then runs forward, backward and the optimizer). Prints medians in ms and each
part's share of the step, so the numbers compare within one run on a shared host.
Nothing is written: the trainer's output folder is a temporary one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shapes_mini.json"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after two warm-up steps)")
    args, overrides = parser.parse_known_args(argv)  # the rest: recipe overrides, as `cir train` takes them
    if args.steps < 3:
        parser.error("--steps must be at least 3")

    from cir_core.train import Trainer, config_from_args

    with tempfile.TemporaryDirectory() as out_dir:
        try:
            config = config_from_args(args, overrides).with_overrides(
                {"out_dir": out_dir, "eval_every": "0", "progress": "false"})
            trainer = Trainer(config)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        times: dict[str, list[float]] = {"render look-alikes": [], "prepare pixels": [], "whole step": []}
        for number in range(args.steps + 2):  # the first two warm up
            triplets = [trainer.train_split.triplets[i] for i in trainer.sampler.next_batch()]
            started = time.perf_counter()
            rendered = trainer.extras.extra_negatives(triplets, trainer.caption_rng)
            rendered_at = time.perf_counter()
            trainer.images.batch([t.target for t in triplets], rendered)
            prepared_at = time.perf_counter()
            trainer.train_step()
            if number >= 2:
                times["render look-alikes"].append(1000 * (rendered_at - started))
                times["prepare pixels"].append(1000 * (prepared_at - rendered_at))
                times["whole step"].append(1000 * (time.perf_counter() - prepared_at))
        rendered_count = len(rendered)
    median = {name: round(statistics.median(values), 2) for name, values in times.items()}
    report = {"config": args.config, "overrides": overrides, "steps": args.steps,
              "precision": trainer.precision, "threads": torch.get_num_threads(),
              "rendered_scenes_per_step": rendered_count, "median_ms": median,
              "share_of_step": {name: round(median[name] / median["whole step"], 4)
                                for name in ("render look-alikes", "prepare pixels")}}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
