"""Launch the SPRC composed image retrieval app.

    python app.py [--model URI] [--index DIR] [--gallery DIR]

Environment: CIR_MODEL, CIR_INDEX, CIR_GALLERY (flags win), GRADIO_SERVER_NAME (default
127.0.0.1), GRADIO_SERVER_PORT (default 7860), CIR_PREPARE_FAILURES=0 (do not rank the
benchmark queries for the failure view in the background at start), CIR_QUERY_PRECISION=bf16
or int8 (encode searches without explanations with a reduced-precision copy of the model:
faster on a CPU, rankings can differ from fp32 where scores nearly tie; default fp32),
CIR_GALLERY_PRECISION=fp32, bf16, int8 or auto (how the default gallery is indexed on first
start; auto, the default, is bf16 on a CPU with bf16 units; int8 is the fastest). Models are `local-dir:PATH` or
`hf-hub:org/name` URIs. The default is the embedded shapes-mini model with the shapes
benchmark's test gallery (assets/shapes when shipped, else data/shapes as written by
`cir data shapes --out data/shapes`, else generated once with seed 0), indexed on first start.
"""
import argparse
import logging
import os
import sys
from pathlib import Path

from cir_core.checkpoints import CheckpointError
from cir_core.engine import Engine
from cir_core.precision import GALLERY_PRECISIONS, QUERY_PRECISIONS

DEFAULT_MODEL = "local-dir:checkpoints/shapes-mini"
SHAPES_FOLDERS = (Path("assets/shapes"), Path("data/shapes"))  # the shapes benchmark, if already on disk
EXAMPLES_FILE = Path("assets/examples.json")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("CIR_MODEL", DEFAULT_MODEL), help="model URI")
    parser.add_argument("--index", default=os.environ.get("CIR_INDEX"), help="gallery index folder (cir build-index)")
    parser.add_argument("--gallery", default=os.environ.get("CIR_GALLERY"),
                        help="gallery data: a shapes benchmark folder or a folder of images")
    return parser.parse_args(argv)


def _setting(name: str, default: str, allowed: tuple[str, ...]) -> str | None:
    """The environment variable `name` when it is one of `allowed` (else None, after saying so)."""
    value = os.environ.get(name, default)
    if value not in allowed:
        print(f"cannot start the app: {name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}",
              file=sys.stderr)
        return None
    return value


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    prepare_failures = _setting("CIR_PREPARE_FAILURES", "1", ("0", "1"))
    query_precision = _setting("CIR_QUERY_PRECISION", "fp32", QUERY_PRECISIONS)
    gallery_precision = _setting("CIR_GALLERY_PRECISION", "auto", GALLERY_PRECISIONS)
    if None in (prepare_failures, query_precision, gallery_precision):
        return 2
    gallery = args.gallery or next((folder for folder in SHAPES_FOLDERS if (folder / "info.json").is_file()), None)
    try:
        engine = Engine.from_uris(args.model, index_dir=args.index, gallery_data=gallery,
                                  query_precision=query_precision, gallery_precision=gallery_precision)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        hint = ("\nThe default model is missing: train it into checkpoints/shapes-mini (see README), "
                "or point CIR_MODEL / --model at another checkpoint." if args.model == DEFAULT_MODEL else "")
        print(f"cannot start the app: {error}{hint}", file=sys.stderr)
        return 2
    if prepare_failures == "1":
        engine.prepare_failures()  # background: ranks every benchmark query once (then cached on disk)
    from demo import launch

    launch(engine, examples_file=EXAMPLES_FILE, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
