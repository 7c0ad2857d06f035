"""`cir convert (--from-lavis FILE.pt | --from-transformers PATH) --preset NAME --out DIR`."""
from __future__ import annotations

import argparse
import sys

DTYPES = ("float32", "float16")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="import official SPRC/LAVIS or transformers BLIP-2 weights as a checkpoint folder",
        description="Convert official weights into a checkpoint folder that `local-dir:DIR` loads. "
                    "Every source key is accounted for: mapped, dropped (unused heads) or reported as a problem; "
                    "nothing is written unless all model parameters are filled with matching shapes.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-lavis", metavar="FILE", help="official SPRC checkpoint or LAVIS BLIP-2 pickle (.pt/.pth)")
    source.add_argument("--from-transformers", metavar="PATH",
                        help="Blip2ForImageTextRetrieval weights: a folder (model.safetensors, sharded index or "
                             "pytorch_model.bin) or one such file, e.g. a download of Salesforce/blip2-itm-vit-g")
    parser.add_argument("--preset", required=True, help="model size the weights belong to, e.g. blip2-vitg")
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="precision of the stored weights (float16 halves the file; default float32)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cir_core.convert import ConversionError, convert_lavis, convert_transformers_blip2

    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    limit = None if args.verbose else 20
    try:
        if args.from_lavis:
            report = convert_lavis(args.from_lavis, args.preset, args.out, dtype=dtype)
        else:
            report = convert_transformers_blip2(args.from_transformers, args.preset, args.out, dtype=dtype)
    except ConversionError as error:
        if error.report is not None:
            print(error.report.describe(limit), file=sys.stderr)
        raise
    print(report.describe(limit))
    return 0
