"""`cir train --config FILE [--resume] [--section.key=value ...]`."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train SPRC (shapes, CIRR or FashionIQ) with the one training loop",
        description="Train SPRC. Any field of the config can be overridden as --section.key=value, "
                    "e.g. --optim.lr=1e-4 --max_steps=200 --model.overrides.qformer.num_query_tokens=16.")
    from cir_core.train import add_arguments

    add_arguments(parser)
    parser.set_defaults(handler=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from cir_core.train import Trainer, config_from_args

    config = config_from_args(args, args.overrides)
    metrics = Trainer(config, resume=args.resume, overwrite=args.overwrite).run()
    print(json.dumps({"out_dir": config.out_dir, "final_validation": metrics}, indent=2))
    return 0
