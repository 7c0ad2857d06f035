"""`cir space-export OUT [--model URI] [--dataset NAME --data-root DIR | --gallery DIR] [--index DIR] [--push USER/NAME]`."""
from __future__ import annotations

import argparse
from pathlib import Path

from cir_core.cli import CommandError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "space-export", help="write a folder that is a Hugging Face Space for the app",
        description="Write OUT (absent or empty) as a Hugging Face Space serving the app: app.py, the cir_core and "
                    "demo code, requirements.txt, the model folder (checkpoints/NAME), the gallery (the shipped "
                    "benchmark by default, else data/NAME), a prebuilt index (index/), README.md with the Space's "
                    "front matter, .gitattributes sending large files through LFS and space_settings.json, which "
                    "app.py reads as its defaults. Written atomically; only local-dir: models.")
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write (must be absent or empty)")
    parser.add_argument("--model", help="model URI, local-dir:PATH (default: the served benchmark's embedded model)")
    parser.add_argument("--dataset", help="benchmark to serve (default scenes3d, shipped in assets/)")
    parser.add_argument("--data-root", type=Path, metavar="DIR", help="the benchmark's folder, copied to OUT/data/")
    parser.add_argument("--split", help="benchmark split served")
    parser.add_argument("--category", help="FashionIQ category served")
    parser.add_argument("--gallery", type=Path, metavar="DIR", help="a plain folder of images, copied to OUT/data/")
    parser.add_argument("--index", type=Path, metavar="DIR",
                        help="prebuilt index folder (cir build-index) of the same model, copied to OUT/index")
    parser.add_argument("--title", help="the Space's title")
    parser.add_argument("--push", metavar="USER/NAME", help="then create the Space and upload the folder to it")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cir_core.checkpoints import CheckpointError
    from cir_core.space_export import ExportError, check_out, export_space, plan_export, push_space

    if args.push is not None and args.push.count("/") != 1:
        raise CommandError(f"--push must look like USER/NAME, got {args.push!r}")
    try:
        check_out(args.out)
        export = plan_export(model=args.model, dataset=args.dataset, data_root=args.data_root, split=args.split,
                             category=args.category, gallery=args.gallery, index=args.index, title=args.title)
        summary = export_space(export, args.out)
    except (ExportError, CheckpointError) as error:
        raise CommandError(str(error)) from None
    if args.push:
        push_space(args.out, args.push)
    print(summary.line(args.push))
    return 0
