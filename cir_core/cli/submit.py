"""`cir submit cirr`: write the two JSON files the CIRR evaluation server takes."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cir_core.cli.eval import add_model_arguments, load_model_from_args, needs_model, split_features


def register(subparsers) -> None:
    parser = subparsers.add_parser("submit", help="write benchmark test-server submission files (CIRR)",
                                   description="Write benchmark test-server submission files.")
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    cirr = benchmarks.add_parser(
        "cirr", help="CIRR test1: recall_submission_NAME.json (top 50) and recall_subset_submission_NAME.json (top 3)")
    cirr.add_argument("--data-root", type=Path, required=True,
                      help="the cirr_dataset folder (cirr/captions, cirr/image_splits, test1/)")
    cirr.add_argument("--split", default="test1", choices=("test1", "val"))
    cirr.add_argument("--image-root", type=Path, help="folder the image_splits paths are relative to (default: --data-root)")
    cirr.add_argument("--out", type=Path, required=True, help="folder for the two JSON files")
    cirr.add_argument("--name", default="sprc", help="submission name used in the file names")
    add_model_arguments(cirr, features=True)
    cirr.set_defaults(handler=_submit_cirr)


def _submit_cirr(args: argparse.Namespace) -> int:
    from cir_core.data.cirr import read_cirr
    from cir_core.evaluation.cirr import write_cirr_submission

    use_model = needs_model(args)
    split = read_cirr(args.data_root, args.split, image_root=args.image_root, check_images=use_model)
    model = load_model_from_args(args) if use_model else None
    submission = write_cirr_submission(model, split, args.out, args.name, args.batch_size, not args.no_progress,
                                       split_features(args, model, split), args.cache_reference_features,
                                       args.num_workers)
    if args.json:
        print(json.dumps({"recall_file": str(submission.recall_file),
                          "recall_subset_file": str(submission.recall_subset_file),
                          "num_queries": submission.num_queries}, indent=2))
    else:
        print(f"{split.name}: {submission.num_queries} queries")
        print(f"wrote {submission.recall_file}")
        print(f"wrote {submission.recall_subset_file}")
    return 0
