"""`cir train --config FILE [--resume] [--section.key=value ...]`."""
from __future__ import annotations

import argparse
import json


EPILOG = """\
A run folder (out_dir) holds metrics.jsonl (one JSON object per log line), last/ (a
checkpoint plus the trainer state for --resume) and best/ (the best validation metric so
far). A folder that already holds a run is continued with --resume or replaced with
--overwrite, never mixed; every option is checked before training starts.

The loop: AdamW + OneCycle with per-group learning rates (optim.*), the itc/rtc/align
losses (and loss.description_weight where the dataset describes its images) with the
model config's weights, gradient clipping, bf16 autocast where the device computes bf16
natively (precision auto; bf16 or fp32 force one).

Options of one dataset go in data.options and are checked by that dataset (the former
top-level shapes.* keys still read):
  shapes:    position_negatives (scenes per batch with a target's objects in another layout),
             position_negative_spread (even or inverse_objects), edit_negatives (a batch reference
             edited the same way with another outcome), lone_target_repeats, region_weight
  fashioniq: categories (trained jointly, each validated alone)

Recipes are in configs/; every option, with a line on each, in cir_core/train_config.py
(dataset options: ShapesOptions in cir_core/data/shapes_training.py, FashionIQOptions in
cir_core/data/fashioniq.py).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train SPRC on any registered dataset (shapes, scenes3d, CIRR, FashionIQ) with the one training loop",
        description="Train SPRC. Any field of the config can be overridden as --section.key=value, "
                    "e.g. --optim.lr=1e-4 --max_steps=200 --model.overrides.qformer.num_query_tokens=16.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from cir_core.train import add_arguments

    add_arguments(parser)
    parser.set_defaults(handler=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from cir_core.train import Trainer, config_from_args

    config = config_from_args(args, args.overrides)
    metrics = Trainer(config, resume=args.resume, overwrite=args.overwrite).run()
    print(json.dumps({"out_dir": config.out_dir, "final_validation": metrics}, indent=2))
    return 0
