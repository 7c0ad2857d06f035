"""`cir data shapes --out DIR` and `cir data scenes3d --out DIR`: generate the synthetic benchmarks."""
from __future__ import annotations

import argparse
from pathlib import Path

from cir_core.cli import CommandError


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="generate datasets (the synthetic shapes and scenes3d benchmarks)",
                                   description="Generate datasets.")
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    shapes = kinds.add_parser(
        "shapes", help="render the shapes benchmark: 3x3 scenes, edits, train/val/test splits and galleries",
        description="Sample, render and write the shapes benchmark (info.json, images/, scenes.json, "
                    "<split>.json, gallery_<split>.json). The folder appears only when complete.")
    shapes.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to create")
    shapes.add_argument("--seed", type=int, default=0, help="changes which scenes are sampled (default 0)")
    shapes.add_argument("--image-size", type=int, default=96, help="image side in pixels (default 96)")
    # Size defaults live in ShapesCounts; None keeps them.
    shapes.add_argument("--train", type=int, help="train triplets (default 24000: 6000 references x 4 edits)")
    shapes.add_argument("--val", type=int, help="val triplets (default 1000)")
    shapes.add_argument("--test", type=int, help="test triplets (default 2000)")
    shapes.add_argument("--hard-negatives", type=float, metavar="FRACTION",
                        help="share of queries that add a one-attribute-away scene to the gallery (default 0.5)")
    shapes.add_argument("--distractors", type=float, metavar="FRACTION",
                        help="extra random gallery scenes per scene of the split (default 0.2)")
    shapes.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    shapes.add_argument("--overwrite", action="store_true", help="replace an existing shapes dataset at --out")
    shapes.add_argument("--no-progress", action="store_true", help="hide progress bars")
    shapes.set_defaults(handler=_shapes)
    _register_scenes3d(kinds)
    export = kinds.add_parser(
        "export-split", help="copy one split of a shapes folder (queries, gallery images, labels) to a new folder",
        description="Copy one split of a shapes benchmark folder into a new, smaller folder (e.g. the test split "
                    "that the app ships under assets/shapes).")
    export.add_argument("--data", type=Path, required=True, metavar="DIR", help="shapes benchmark folder")
    export.add_argument("--split", default="test", help="split to copy (default test)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to create")
    export.set_defaults(handler=_export)


def _shapes(args: argparse.Namespace) -> int:
    from cir_core.data.shapes import ShapesCounts, write_shapes_dataset

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    given = {"train": args.train, "val": args.val, "test": args.test, "distractor_fraction": args.distractors,
             "hard_negative_fraction": args.hard_negatives}
    counts = ShapesCounts(**{name: value for name, value in given.items() if value is not None})
    summary = write_shapes_dataset(args.out, seed=args.seed, image_size=args.image_size, counts=counts,
                                   progress=not args.no_progress, workers=args.workers, overwrite=args.overwrite)
    splits = ", ".join(f"{name} {summary.triplets[name]} queries / {summary.gallery[name]} gallery"
                       for name in summary.triplets)
    print(f"wrote {summary.path}: {summary.images} images ({summary.images_per_second:.0f} images/s), {splits}; "
          f"{summary.total_seconds:.1f} s in all")
    return 0


def _register_scenes3d(kinds) -> None:
    scenes3d = kinds.add_parser(
        "scenes3d", help="render the scenes3d benchmark: 3D tables, object and camera edits, hard negatives",
        description="Sample, path trace (Mitsuba 3) and write the scenes3d benchmark (info.json, images/, "
                    "scenes.json, <split>.json, gallery_<split>.json). Splits with 0 queries are left out. "
                    "The folder appears only when complete.")
    scenes3d.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to create")
    scenes3d.add_argument("--seed", type=int, default=0, help="changes which scenes are sampled (default 0)")
    scenes3d.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    # Size defaults live in Scenes3DCounts; None keeps them.
    scenes3d.add_argument("--train", type=int, help="train triplets (default 8000: 2000 reference views x 4 edits)")
    scenes3d.add_argument("--val", type=int, help="val triplets (default 300)")
    scenes3d.add_argument("--test", type=int, help="test triplets (default 800)")
    scenes3d.add_argument("--train-edits-per-reference", type=int,
                          help="edits of each train reference view, 1..4 (default 4)")
    scenes3d.add_argument("--train-negatives", type=int,
                          help="per train query: views of its table from other poses, and as many other tables "
                               "from its pose (default 0)")
    scenes3d.add_argument("--train-camera-only-fraction", type=float,
                          help="share of train queries that only move the camera (default: as val and test, 0.25)")
    scenes3d.add_argument("--train-combined-fraction", type=float,
                          help="share of train queries with an object edit and a camera edit "
                               "(default: as val and test, 0.25)")
    scenes3d.add_argument("--samples-per-pixel", type=int, help="path-tracing samples per pixel (default 8)")
    scenes3d.add_argument("--image-format", choices=("webp", "png"), default="webp",
                          help="webp (lossy, quality 90: about a tenth of png's size) or png (default webp)")
    scenes3d.add_argument("--workers", type=int, default=2, help="rendering processes, one thread each (default 2)")
    scenes3d.add_argument("--overwrite", action="store_true", help="replace an existing scenes3d dataset at --out")
    scenes3d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    scenes3d.set_defaults(handler=_scenes3d)


def _scenes3d(args: argparse.Namespace) -> int:
    from cir_core.data.scenes3d.plan import Scenes3DCounts
    from cir_core.data.scenes3d.write import write_scenes3d_dataset

    given = {"train": args.train, "val": args.val, "test": args.test,
             "train_edits_per_reference": args.train_edits_per_reference, "train_negatives": args.train_negatives,
             "train_camera_only_fraction": args.train_camera_only_fraction,
             "train_combined_fraction": args.train_combined_fraction}
    for name, value in given.items():
        if value is not None and not value >= 0:
            raise CommandError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    counts = Scenes3DCounts(**{name: value for name, value in given.items() if value is not None})
    options = {} if args.samples_per_pixel is None else {"samples_per_pixel": args.samples_per_pixel}
    try:
        summary = write_scenes3d_dataset(args.out, seed=args.seed, image_size=args.image_size, counts=counts,
                                         progress=not args.no_progress, workers=args.workers,
                                         overwrite=args.overwrite, image_format=args.image_format, **options)
    except ImportError as error:
        raise CommandError(str(error)) from None
    splits = ", ".join(f"{name} {summary.triplets[name]} queries / {summary.gallery[name]} gallery"
                       for name in summary.triplets)
    print(f"wrote {summary.path}: {summary.images} images ({summary.images_per_second:.1f} images/s), {splits}; "
          f"{summary.total_seconds:.1f} s in all")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cir_core.data.shapes import export_split, read_shapes_split

    out = export_split(args.data, args.split, args.out)
    split = read_shapes_split(out, args.split)
    print(f"wrote {out}: {len(split)} queries, {len(split.gallery)} gallery images")
    return 0
