"""`cir eval cirr|fashioniq|shapes|scenes3d`: run an evaluation protocol and print its metrics."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cir_core.cli import CommandError
from cir_core.config import PROMPT_MODES
from cir_core.device import DEVICES
from cir_core.precision import GALLERY_PRECISIONS, QUERY_PRECISIONS

FASHIONIQ_DEFAULT_CATEGORIES = "dress,shirt,toptee"


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model with an official protocol (CIRR, FashionIQ, shapes)",
                                   description="Evaluate a model with an official protocol.")
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)

    cirr = protocols.add_parser("cirr", help="CIRR val: R@1/5/10/50, Recall_subset@1/2/3, (R@5 + Rs@1)/2")
    cirr.add_argument("--data-root", type=Path, required=True,
                      help="the cirr_dataset folder (cirr/captions, cirr/image_splits, dev/, train/)")
    cirr.add_argument("--split", default="val", choices=("val", "train"))
    cirr.add_argument("--image-root", type=Path, help="folder the image_splits paths are relative to (default: --data-root)")
    add_model_arguments(cirr, features=True)
    cirr.set_defaults(handler=_eval_cirr)

    fashioniq = protocols.add_parser("fashioniq", help="FashionIQ val: R@10/R@50 per category and (R@10 + R@50)/2")
    fashioniq.add_argument("--data-root", type=Path, required=True,
                           help="the fashionIQ_dataset folder (captions/, image_splits/, images/)")
    fashioniq.add_argument("--split", default="val")
    fashioniq.add_argument("--categories", default=FASHIONIQ_DEFAULT_CATEGORIES, help="comma-separated categories")
    add_model_arguments(fashioniq, features=True)
    fashioniq.set_defaults(handler=_eval_fashioniq)

    shapes = protocols.add_parser("shapes", help="synthetic shapes benchmark: R@1/5/10/50 overall and per edit type")
    shapes.add_argument("--data", type=Path, required=True, help="a generated shapes dataset folder")
    shapes.add_argument("--split", default="test")
    shapes.add_argument("--no-prompt", action="store_true",
                        help="skip the prompt faithfulness measure (nearest descriptions of the composed query "
                             "and of the prompt; models with a prompt only)")
    add_precision_arguments(shapes)
    add_model_arguments(shapes, features=False)
    shapes.set_defaults(handler=_eval_shapes)

    scenes3d = protocols.add_parser(
        "scenes3d", help="rendered 3D benchmark: R@1/5/10/50, per query group (view angle first), misses by kind")
    scenes3d.add_argument("--data", type=Path, required=True, help="a scenes3d folder (cir data scenes3d)")
    scenes3d.add_argument("--split", default="test")
    scenes3d.add_argument("--no-prompt", action="store_true",
                          help="skip the prompt faithfulness measure (nearest descriptions; models with a "
                               "prompt only)")
    add_precision_arguments(scenes3d)
    add_model_arguments(scenes3d, features=False)
    scenes3d.set_defaults(handler=_eval_scenes3d)


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """How queries and gallery are encoded, as the app's and the index builder's settings do."""
    parser.add_argument("--query-precision", default="fp32", choices=QUERY_PRECISIONS,
                        help="encode the queries as an engine with this setting does (int8: CPU only)")
    parser.add_argument("--gallery-precision", default="fp32", choices=GALLERY_PRECISIONS,
                        help="encode the gallery as `cir build-index --precision` does (int8: CPU only)")


def add_model_arguments(parser: argparse.ArgumentParser, features: bool) -> None:
    """Options shared by every evaluation and submission command."""
    parser.add_argument("--model", help="model URI: local-dir:PATH, hf-hub:org/name or a folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (default): CUDA when available, where the model runs in fp16; cuda is refused without it")
    parser.add_argument("--num-workers", type=int, default=0, help="image-loading worker processes")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if features:
        parser.add_argument("--cache-reference-features", action="store_true",
                            help="keep gallery vision features on the CPU to skip re-encoding references")
        parser.add_argument("--save-features", type=Path, metavar="DIR",
                            help="also write the computed features to DIR/<split>.pt")
        parser.add_argument("--from-features", type=Path, metavar="DIR",
                            help="evaluate features saved by --save-features instead of running a model")


def needs_model(args: argparse.Namespace) -> bool:
    """Whether the command runs a model (not --from-features); checks the model options first."""
    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1")
    if getattr(args, "from_features", None) is not None:
        return False
    if not args.model:
        raise CommandError("--model is required" + (" (or --from-features DIR)" if hasattr(args, "from_features") else ""))
    _device(args)  # refused before any data is read
    return True


def _device(args: argparse.Namespace):
    from cir_core.device import DeviceError, resolve_device

    try:
        return resolve_device(args.device)
    except DeviceError as error:
        raise CommandError(str(error)) from None


def load_model_from_args(args: argparse.Namespace):
    from cir_core.checkpoints import load_model
    from cir_core.device import place_model

    return place_model(load_model(args.model), _device(args))


def features_file(folder: Path, split_name: str) -> Path:
    return folder / (split_name.replace("/", "_") + ".pt")


def split_features(args: argparse.Namespace, model, split):
    """Cached features for `split` (from --from-features), or computed now and saved if asked; None = compute later."""
    from cir_core.evaluation.features import RetrievalFeatures, compute_features

    if args.from_features is not None:
        return RetrievalFeatures.load(features_file(args.from_features, split.name))
    if args.save_features is None:
        return None
    features = compute_features(model, split, args.batch_size, not args.no_progress,
                                args.cache_reference_features, args.num_workers)
    features.save(features_file(args.save_features, split.name))
    return features


def _print_metrics(values: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:6.2f}" for name, value in values.items())


def _eval_cirr(args: argparse.Namespace) -> int:
    from cir_core.data.cirr import read_cirr
    from cir_core.evaluation.cirr import evaluate_cirr

    use_model = needs_model(args)
    split = read_cirr(args.data_root, args.split, image_root=args.image_root, check_images=use_model)
    model = load_model_from_args(args) if use_model else None
    report = evaluate_cirr(model, split, args.batch_size, not args.no_progress, split_features(args, model, split),
                           args.cache_reference_features, args.num_workers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.split}: {report.num_queries} queries, reference excluded")
    print(_print_metrics(report.recall))
    print(_print_metrics(report.recall_subset))
    print(f"(R@5 + Rsubset@1)/2 {report.average:6.2f}")
    return 0


def _eval_fashioniq(args: argparse.Namespace) -> int:
    from cir_core.data.fashioniq import FASHIONIQ_CATEGORIES, read_fashioniq
    from cir_core.evaluation.fashioniq import evaluate_fashioniq

    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = [c for c in categories if c not in FASHIONIQ_CATEGORIES]
    if unknown or not categories:
        raise CommandError(f"--categories must list some of {', '.join(FASHIONIQ_CATEGORIES)}; got {args.categories!r}")
    use_model = needs_model(args)
    splits = {c: read_fashioniq(args.data_root, c, args.split, check_images=use_model) for c in categories}
    model = load_model_from_args(args) if use_model else None
    features = {c: split_features(args, model, split) for c, split in splits.items()}
    report = evaluate_fashioniq(model, splits, args.batch_size, not args.no_progress,
                                {c: f for c, f in features.items() if f is not None},
                                args.cache_reference_features, args.num_workers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{'category':<10} {'queries':>7} {'R@10':>7} {'R@50':>7}")
    for category, recall in report.categories.items():
        print(f"{category:<10} {report.num_queries[category]:>7} {recall['R@10']:7.2f} {recall['R@50']:7.2f}")
    print(f"{'average':<10} {sum(report.num_queries.values()):>7} {report.recall['R@10']:7.2f} {report.recall['R@50']:7.2f}")
    print(f"(R@10 + R@50)/2 {report.average:6.2f}")
    return 0


def _print_shapes_table(report: dict) -> None:
    """Rows: all queries, each edit type, the novel/seen subsets, then by objects in the target; columns: queries and R@k."""
    names = list(report["recall"])
    print(f"{report['split']}: {report['num_queries']} queries, gallery {report['gallery_size']}")
    print(f"{'queries':<16} {'n':>6} " + " ".join(f"{name:>7}" for name in names))
    rows = [("all", report["num_queries"], report["recall"])]
    rows += [(edit, report["edit_counts"][edit], recall) for edit, recall in report["per_edit"].items()]
    rows += [("novel", report["num_novel"], report["novel"]),
             ("seen", report["num_queries"] - report["num_novel"], report["seen"])]
    rows += [(f"{count} object{'s' if count != '1' else ''}", report["object_counts"][count], recall)
             for count, recall in report.get("per_object_count", {}).items()]
    for label, count, recall in rows:
        if count:
            print(f"{label:<16} {count:>6} " + " ".join(f"{recall[name]:7.2f}" for name in names))
    confusions = report.get("confusions")
    if confusions:
        kinds = ", ".join(f"{kind} {count}" for kind, count in confusions.items())
        print(f"first result wrong ({sum(confusions.values())}), by how it differs from the target: {kinds}")
    prompt = report.get("prompt")
    if prompt:
        print(f"target description among the 5 nearest: composed query {prompt['composed_top5']:.1f}%, "
              f"prompt alone {prompt['prompt_top5']:.1f}%; removed object still in the nearest description: "
              f"{prompt['removed_in_first']:.1f}% of {prompt['remove_queries']} remove queries")


def _eval_shapes(args: argparse.Namespace) -> int:
    from cir_core.data.shapes import read_shapes_scenes, read_shapes_split
    from cir_core.evaluation.shapes import evaluate_shapes

    needs_model(args)
    split = read_shapes_split(args.data, args.split)
    model = load_model_from_args(args)
    try:
        scenes = read_shapes_scenes(args.data)
        report = evaluate_shapes(model, split, args.batch_size, not args.no_progress, scenes,
                                 query_precision=args.query_precision, gallery_precision=args.gallery_precision)
        summary = report.to_dict()
        if not args.no_prompt and model.config.query_mode in PROMPT_MODES:
            from cir_core.evaluation.prompt_faithfulness import shapes_prompt_faithfulness

            summary["prompt"] = shapes_prompt_faithfulness(model, split, scenes, args.batch_size,
                                                           not args.no_progress).to_dict()
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps({**summary, "query_precision": args.query_precision,
                          "gallery_precision": args.gallery_precision}, indent=2))
    else:
        _print_shapes_table(summary)
    return 0


def _eval_scenes3d(args: argparse.Namespace) -> int:
    from cir_core.evaluation.scenes3d import evaluate_scenes3d, read_scenes3d_for_eval

    needs_model(args)
    try:
        split, views = read_scenes3d_for_eval(args.data, args.split)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from None
    model = load_model_from_args(args)
    try:
        summary = evaluate_scenes3d(model, split, views, args.batch_size, not args.no_progress, args.query_precision,
                                    args.gallery_precision, prompt=not args.no_prompt).summary
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    names = list(summary["recall"])
    print(f"{summary['split']}: {summary['num_queries']} queries, reference excluded")
    print(f"{'queries':<28} {'n':>5} " + " ".join(f"{name:>7}" for name in names))
    print(f"{'all':<28} {summary['num_queries']:>5} " + " ".join(f"{summary['recall'][n]:7.2f}" for n in names))
    for group, figures in summary["per_group"].items():
        print(f"{group:<28} {figures['queries']:>5} {figures['R@1']:7.2f} {figures['R@5']:7.2f}")
    print("misses by kind: " + ", ".join(f"{kind} {count}" for kind, count in summary["misses"].items()))
    if "prompt" in summary:
        print(f"target description among the 5 nearest: composed query {summary['prompt']['composed_top5']:.1f}%, "
              f"prompt alone {summary['prompt']['prompt_top5']:.1f}%")
    return 0
