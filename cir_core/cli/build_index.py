"""`cir build-index (--images DIR | --data DIR [--dataset NAME] [--split S]) --model URI --out INDEX_DIR`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cir_core.cli import CommandError
from cir_core.data.registry import DATASETS
from cir_core.device import DEVICES
from cir_core.precision import GALLERY_PRECISIONS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-index", help="encode a gallery into a searchable index folder",
        description="Encode every gallery image with a model's target encoder and write an index folder "
                    "(vectors, metadata, info.json with the model's weights fingerprint and checksums). An "
                    "interrupted build resumes where it stopped, encoding again the batches whose files changed "
                    "on disk since; one build writes an --out at a time, and replaces only an index folder of its "
                    "own. Unreadable files, images over 40 megapixels and strips beyond 50:1 are skipped and "
                    "listed; vectors that are not finite are refused; ivfpq settings are checked before any image "
                    "is encoded. flat is exact; hnsw and ivfpq re-score approximate candidates exactly, for large "
                    "galleries.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="index every image file under DIR (recursively)")
    source.add_argument("--data", type=Path, metavar="DIR",
                        help="a benchmark's folder (see --dataset): index one split's gallery")
    parser.add_argument("--dataset", default="shapes",
                        help=f"benchmark of --data: {', '.join(DATASETS)} (default shapes)")
    parser.add_argument("--split", help="split of --data whose gallery is indexed (default: test for shapes, "
                                        "val for CIRR and FashionIQ)")
    parser.add_argument("--category", help="FashionIQ category of --data (default: the three categories' union)")
    parser.add_argument("--model", required=True, help="model URI: local-dir:PATH, hf-hub:org/name or a folder")
    parser.add_argument("--out", type=Path, required=True, metavar="INDEX_DIR", help="index folder to write")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--kind", choices=("flat", "hnsw", "ivfpq"), default="flat",
                        help="flat: exact search; hnsw/ivfpq: approximate candidates re-scored exactly (large galleries)")
    parser.add_argument("--candidates", type=int, help="hnsw/ivfpq: images re-scored exactly per query (default 200)")
    parser.add_argument("--nlist", type=int, help="ivfpq: IVF lists (default: the power of two at or above sqrt(N*Q), 16 to 16384)")
    parser.add_argument("--nprobe", type=int, help="ivfpq: lists visited per query (default nlist // 20, at least 16)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (default): CUDA when available, where the model runs in fp16; cuda is refused without it")
    parser.add_argument("--precision", choices=GALLERY_PRECISIONS, default="fp32",
                        help="how images are encoded: fp32 (default), bf16 autocast, int8 (CPU only, fastest) "
                             "or auto (bf16 on a CPU with bf16 units, else fp32)")
    parser.add_argument("--store-vision-features", action="store_true",
                        help="also store each image's vision features (fp16; 0.72 MB per image for ViT-g) so that a "
                             "query whose reference is a gallery image skips the vision encoder")
    parser.add_argument("--no-resume", action="store_true", help="discard the encoded batches of an interrupted build")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--json", action="store_true", help="print the build summary as JSON")
    parser.add_argument("--export-seed", type=Path, metavar="FILE.npz",
                        help="also write the vectors as an index seed (fp16, with the model's fingerprint), which "
                             "an app serving the same gallery with the same model uses instead of encoding it; "
                             "replaces an earlier seed only, never a folder, device or FIFO, nor a path inside --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --export-seed replace an existing file that is not a seed (or a symbolic link)")
    parser.set_defaults(handler=run)


def _check_destination(out: Path) -> None:
    """Refuse, before any image is read, to replace a folder that is not an index of its own."""
    from cir_core.index_store import check_destination

    try:
        check_destination(out)
    except ValueError as error:
        raise CommandError(f"--out {error}") from None


def _check_seed_destination(args: argparse.Namespace) -> None:
    """Refuse, before any image is read, a seed path that the export would have to refuse after the build."""
    from cir_core.index_seed import SeedError, check_seed_destination

    try:
        check_seed_destination(args.export_seed, args.out, args.overwrite)
    except SeedError as error:
        raise CommandError(f"--export-seed {error}") from None


def run(args: argparse.Namespace) -> int:
    from cir_core.checkpoints import load_model
    from cir_core.device import DeviceError, place_model, resolve_device
    from cir_core.index import GalleryIndex, IndexParams
    from cir_core.data.registry import open_source
    from cir_core.index_build import items_from_images

    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1")
    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        raise CommandError(str(error)) from None
    _check_destination(args.out)
    if args.export_seed is not None:
        _check_seed_destination(args)
    if args.images:
        items = items_from_images(args.images)
    else:
        items = open_source(args.dataset, args.data, split=args.split, category=args.category).gallery_items()
    overrides = {name: getattr(args, name) for name in ("candidates", "nlist", "nprobe") if getattr(args, name) is not None}
    params = IndexParams(kind=args.kind, **overrides)
    params.validate()
    model = place_model(load_model(args.model), device)
    index = GalleryIndex.build(model, items, args.out, batch_size=args.batch_size, progress=not args.no_progress,
                               resume=not args.no_resume, model_id=args.model, params=params, precision=args.precision,
                               store_vision_features=args.store_vision_features)
    report = index.report
    if args.export_seed is not None:
        from cir_core.index_seed import export_seed

        export_seed(index, args.export_seed, overwrite=args.overwrite)
    summary = {"index": str(args.out), "kind": index.kind, "images": len(index), "skipped": report.skipped_count,
               "skipped_files": [{"path": s.path, "reason": s.reason} for s in report.skipped],
               "vectors_per_image": index.num_query_tokens, "dim": index.dim, "fingerprint": index.fingerprint,
               "resumed_batches": report.resumed_batches, "precision": index.info.get("precision"),
               "vision_features": index.info.get("vision_features")}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"indexed {len(index)} images into {args.out} ({index.kind}, {index.num_query_tokens} x {index.dim} "
              f"vectors per image, model fingerprint {index.fingerprint})")
        if report.skipped:
            print(f"skipped {report.skipped_count} unreadable files:")
            for skipped in report.skipped:
                print(f"  {skipped.path}: {skipped.reason}")
    return 0
