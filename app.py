"""Launch the SPRC composed image retrieval app.

    python app.py [--model URI] [--dataset scenes3d|shapes|cirr|fashioniq [--data-root DIR] [--split S]
                  [--category C]]
                  [--gallery IMAGES_DIR] [--index DIR]

A benchmark (`--dataset` with its `--data-root`: a shapes folder, the official CIRR
`cirr_dataset` folder or the FashionIQ folder) gives the app its gallery, example
queries, ground truth and failure inspection; `--gallery` serves a plain folder of images
without ground truth; `--index` serves a prebuilt index (`cir build-index`). Indexes
are built once per model and gallery (its folder and files) and cached under ~/.cache/cir
($CIR_CACHE; a temporary folder for this run when that cannot be written).

Environment (flags win): CIR_MODEL, CIR_DATASET, CIR_DATA_ROOT, CIR_SPLIT, CIR_CATEGORY,
CIR_GALLERY, CIR_INDEX (defaults for these seven may also come from a space_settings.json next to
app.py, as `cir space-export` writes it), GRADIO_SERVER_NAME (default 127.0.0.1), GRADIO_SERVER_PORT
(default 7860), CIR_PREPARE_FAILURES=0 (do not rank the benchmark queries for the failure
view in the background at start), CIR_DEVICE=auto, cpu or cuda (--device; auto, the
default, is CUDA when available, where the model runs in fp16), CIR_QUERY_PRECISION=fp32,
bf16 or int8 (encode searches without explanations with a reduced-precision copy of the
model: faster on a CPU, rankings can differ from fp32 where scores nearly tie; the
default, auto, is int8 for a ViT-g model on a CPU and fp32 otherwise),
CIR_GALLERY_PRECISION=fp32, bf16, int8 or auto (how a gallery is indexed on first start;
auto, the default, is bf16 on a CPU with bf16 units; int8 is the fastest). Models are
`local-dir:PATH` or `hf-hub:org/name` URIs.

Without flags the app serves the embedded scenes3d-mini model on the scenes3d test split
shipped in assets/scenes3d (else data/scenes3d as `cir data scenes3d --out data/scenes3d`
writes it). `--dataset shapes` serves the embedded shapes-mini model on the shapes test
split (assets/shapes, else data/shapes, else generated once with seed 0). `--model`
replaces the model of either; other benchmarks need `--data-root` and get the scenes3d
model unless `--model` names one.
"""
import argparse
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path

from cir_core.checkpoints import CheckpointError
from cir_core.data.registry import DATASETS, open_source
from cir_core.engine import Engine
from cir_core.index_cache import usable_cache_root
from cir_core.precision import GALLERY_PRECISIONS, QUERY_PRECISIONS
from cir_core.shipped import DEFAULT_DATASET, SHIPPED, default_model



DEFAULT_MODEL = SHIPPED[DEFAULT_DATASET].model


class StartError(Exception):
    """A setting the app cannot start with: printed as one line, exit code 2."""


# Written by `cir space-export`: the settings a Space serves without flags (environment and flags win).
SETTINGS_FILE = Path(__file__).resolve().parent / "space_settings.json"
BAKED_SETTINGS = ("CIR_MODEL", "CIR_DATASET", "CIR_DATA_ROOT", "CIR_SPLIT", "CIR_CATEGORY", "CIR_GALLERY", "CIR_INDEX")


def baked_settings(path: Path | None = None) -> dict[str, str]:
    """The settings in space_settings.json ({} without the file)."""
    path = path or SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StartError(f"cannot read {path}: {error}") from None
    if not isinstance(settings, dict) or not all(
            name in BAKED_SETTINGS and isinstance(value, str) for name, value in settings.items()):
        raise StartError(f"{path} must map some of {', '.join(BAKED_SETTINGS)} to strings")
    return settings


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    baked = baked_settings()

    def env(name, default=None):
        return os.environ.get(name, baked.get(name, default))

    parser.add_argument("--model", default=env("CIR_MODEL"),
                        help="model URI (default: the embedded model of scenes3d or shapes)")
    parser.add_argument("--dataset", default=env("CIR_DATASET"),
                        help=f"labelled benchmark to serve: {', '.join(DATASETS)} (default {DEFAULT_DATASET})")
    parser.add_argument("--data-root", default=env("CIR_DATA_ROOT"), help="the benchmark's folder")
    parser.add_argument("--split", default=env("CIR_SPLIT"),
                        help="benchmark split (default: test for scenes3d and shapes, val for CIRR and FashionIQ)")
    parser.add_argument("--category", default=env("CIR_CATEGORY"),
                        help="FashionIQ category: dress, shirt or toptee (default: all three in one gallery)")
    parser.add_argument("--gallery", default=env("CIR_GALLERY"), help="a plain folder of images (no ground truth)")
    parser.add_argument("--index", default=env("CIR_INDEX"), help="gallery index folder (cir build-index)")
    parser.add_argument("--device", default=env("CIR_DEVICE", "auto"),
                        help="auto (CUDA when available), cpu or cuda (refused without CUDA)")
    return parser.parse_args(argv)


def _setting(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in allowed:
        raise StartError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    return value


def check_port_free(host: str, port: int) -> None:
    """StartError when the address is taken, before the (slow) model load: gradio would only
    find out after loading, with a traceback."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise StartError(f"port {port} on {host} is in use (another app?): stop it, or set GRADIO_SERVER_PORT "
                             "to a free port") from None
        raise StartError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None


def server_port() -> int:
    """GRADIO_SERVER_PORT, checked before the (slow) model load."""
    raw = os.environ.get("GRADIO_SERVER_PORT", "7860")
    try:
        port = int(raw)
    except ValueError:
        raise StartError(f"GRADIO_SERVER_PORT must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise StartError(f"GRADIO_SERVER_PORT must be between 1 and 65535, got {port}")
    return port


def shipped_folder(dataset: str, cache_root: Path | None = None) -> Path:
    """The shipped benchmark's folder: the first of its folders on disk; shapes is generated once
    (seed 0, seconds) into the cache when none is; scenes3d takes minutes to render, so it is
    a StartError saying how to write it."""
    shipped = SHIPPED[dataset]
    folder = next((folder for folder in shipped.folders if (folder / "info.json").is_file()), None)
    if folder is not None:
        return folder
    if dataset != "shapes":
        raise StartError(f"the {dataset} benchmark is in none of {', '.join(map(str, shipped.folders))}: "
                         f"write it with `{shipped.make}`, or give --data-root")
    from cir_core.data.shapes import write_shapes_dataset

    folder = (cache_root or usable_cache_root()) / "shapes-seed0"
    if not (folder / "info.json").is_file():
        logging.getLogger(__name__).info("generating the shapes benchmark (seed 0) into %s (once)", folder)
        write_shapes_dataset(folder, seed=0, overwrite=True)
    return folder


def benchmark_source(args: argparse.Namespace, cache_root: Path | None = None):
    """The labelled benchmark the flags name, None for a plain gallery or a prebuilt index alone
    (the default shapes benchmark is generated into `cache_root` when not shipped)."""
    dataset, data_root = args.dataset, args.data_root
    if args.gallery and (dataset or data_root):
        raise StartError("give either --gallery (a plain folder of images) or --dataset/--data-root, not both")
    if args.gallery:
        if (Path(args.gallery) / "info.json").is_file():  # a shapes benchmark folder given as a gallery
            dataset, data_root = "shapes", args.gallery
        else:
            return None
    if dataset is None and data_root is None and args.index:
        return None
    dataset = dataset or DEFAULT_DATASET
    if dataset not in DATASETS:
        raise StartError(f"unknown --dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if data_root is None:
        if dataset not in SHIPPED:
            raise StartError(f"--dataset {dataset} needs --data-root (the benchmark's folder)")
        data_root = shipped_folder(dataset, cache_root)
    return open_source(dataset, data_root, split=args.split, category=args.category)


def model_uri(args: argparse.Namespace) -> str:
    """--model, else the embedded model of the benchmark served (of scenes3d for any other)."""
    return args.model or default_model(args.dataset, args.gallery)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
    except StartError as error:
        print(f"cannot start the app: {error}", file=sys.stderr)
        return 2
    cache_root = None
    try:
        prepare_failures = _setting("CIR_PREPARE_FAILURES", "1", ("0", "1"))
        query_precision = _setting("CIR_QUERY_PRECISION", "auto", QUERY_PRECISIONS)
        gallery_precision = _setting("CIR_GALLERY_PRECISION", "auto", GALLERY_PRECISIONS)
        port = server_port()
        host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
        check_port_free(host, port)
        cache_root = usable_cache_root()  # else a temporary one, said in the log
        source = benchmark_source(args, cache_root)
        gallery = args.gallery if source is None else None
        shipped = SHIPPED.get(source.dataset) if source is not None else None
        model = model_uri(args)
        engine = Engine.from_uris(model, index_dir=args.index, gallery_data=gallery, source=source,
                                  index_seed=shipped and shipped.index_seed, query_precision=query_precision,
                                  gallery_precision=gallery_precision, device=args.device, cache_root=cache_root)
    except (StartError, CheckpointError, OSError, ValueError) as error:
        hint = ""
        if isinstance(error, CheckpointError) and not args.model:
            hint = (f"\nThe default model is missing: train it into {model_uri(args).removeprefix('local-dir:')} "
                    "(see README), or point CIR_MODEL / --model at another checkpoint.")
        elif isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT) and cache_root is not None:
            hint = f" (the cache is {cache_root}: free some space there or set CIR_CACHE to another folder)"
        print(f"cannot start the app: {error}{hint}", file=sys.stderr)
        return 2
    from demo import launch
    from demo.startup import AfterFirstAnswer

    startup = AfterFirstAnswer()
    if prepare_failures == "1":  # background, once the app has answered: ranks every benchmark query (cached)
        startup.add(engine.prepare_failures)
    startup.add(engine.prepare_caption_bank)  # the prompt tab's nearest captions
    launch(engine, examples_file=shipped and shipped.examples, server_name=host,
           server_port=port, startup=startup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
