"""CIRR rc2 (Liu et al., ICCV 2021): the reader and the dataset's `SPEC`.

Layout of DATA_ROOT (the official `cirr_dataset` folder):

    cirr/captions/cap.rc2.<split>.json        [{"pairid", "reference", "target_hard", "target_soft",
                                                 "caption", "img_set": {"id", "members", ...}}, ...]
    cirr/image_splits/split.rc2.<split>.json  {image name: "./dev/dev-244-0-img0.png", ...}
    train/<n>/*.png, dev/*.png, test1/*.png   the images, at the relative paths above

The annotation folder may also sit directly in DATA_ROOT (captions/ and image_splits/
next to the image folders). Image paths resolve against `image_root` (default DATA_ROOT) and
must stay inside it: absolute paths, `..` parts and links leading out are refused.
test1 has no target fields; its targets are None.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from cir_core.data.fashioniq import read_json
from cir_core.data.query_groups import VIEW_ANGLE, keyword_groups
from cir_core.data.spec import BenchmarkSource, DatasetSpec, NoOptions
from cir_core.data.triplets import Triplet, TripletSplit
from cir_core.safe_paths import PathOutsideRootError, outside_root

CIRR_SPLITS = ("train", "val", "test1")
CIRR_VERSION = "rc2"


def annotation_dir(data_root: Path) -> Path:
    """Where captions/ and image_splits/ live: DATA_ROOT/cirr (official) or DATA_ROOT itself."""
    nested = data_root / "cirr"
    return nested if (nested / "captions").is_dir() or (nested / "image_splits").is_dir() else data_root


def _parse_record(record: Any, index: int, source: Path, has_targets: bool) -> Triplet:
    required = ("pairid", "reference", "caption", "img_set") + (("target_hard",) if has_targets else ())
    if not isinstance(record, dict) or any(key not in record for key in required):
        missing = [key for key in required if not isinstance(record, dict) or key not in record]
        raise ValueError(f"{source}: record {index} lacks {', '.join(missing)}; got {record!r:.200}")
    pairid = record["pairid"]
    # The server keys predictions by str(pairid): 1.5 or true would be written as another query's id.
    if isinstance(pairid, bool) or not isinstance(pairid, int):
        raise ValueError(f"{source}: record {index} has pairid {pairid!r:.50}; expected a whole number")
    where = f"{source}: record {index} (pairid {pairid})"
    names = {"reference": record["reference"], **({"target_hard": record["target_hard"]} if has_targets else {})}
    for key, value in names.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where} has {key} {value!r:.50}; expected an image name")
    if not isinstance(record["caption"], str):
        raise ValueError(f"{where} has caption {record['caption']!r:.50}; expected text")
    if has_targets and record["target_hard"] == record["reference"]:
        raise ValueError(f"{where} has its reference {record['reference']!r} as its target")
    members = record["img_set"].get("members") if isinstance(record["img_set"], dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise ValueError(f"{where} has no img_set.members list of image names; got {members!r:.100}")
    extras: dict[str, Any] = {"members": members, "img_set_id": record["img_set"].get("id")}
    if has_targets:
        soft = record.get("target_soft")
        if soft is not None and not (isinstance(soft, dict) and all(
                isinstance(value, (int, float)) and not isinstance(value, bool) for value in soft.values())):
            raise ValueError(f"{where} has target_soft {soft!r:.100}; expected an object of image name -> score")
        extras["target_soft"] = dict(soft or {})
    return Triplet(pairid=pairid, reference=record["reference"], caption=record["caption"],
                   target=record["target_hard"] if has_targets else None, extras=extras)


def read_cirr(data_root: str | Path, split: str, image_root: str | Path | None = None,
              check_images: bool = True) -> TripletSplit:
    """A CIRR split as a `TripletSplit`; the gallery is every image of the split's image_splits file.

    Raises FileNotFoundError naming the missing annotation file or how many images are
    missing (never skips queries silently); `check_images=False` reads annotations only.
    """
    if split not in CIRR_SPLITS:
        raise ValueError(f"unknown CIRR split {split!r}; choose from {', '.join(CIRR_SPLITS)}")
    data_root = Path(data_root)
    image_root = Path(image_root) if image_root is not None else data_root
    annotations = annotation_dir(data_root)
    captions_file = annotations / "captions" / f"cap.{CIRR_VERSION}.{split}.json"
    split_file = annotations / "image_splits" / f"split.{CIRR_VERSION}.{split}.json"
    records = read_json(captions_file, data_root)
    name_to_relpath = read_json(split_file, data_root)
    if not isinstance(records, list):
        raise ValueError(f"{captions_file} must hold a list of records; got {type(records).__name__}")
    if not isinstance(name_to_relpath, dict):
        raise ValueError(f"{split_file} must map image names to relative paths; got {type(name_to_relpath).__name__}")

    bad_paths = [name for name, relpath in name_to_relpath.items() if not isinstance(relpath, str) or not relpath]
    if bad_paths:
        raise ValueError(f"{split_file}: image {bad_paths[0]!r} has path {name_to_relpath[bad_paths[0]]!r:.50}; "
                         "expected a relative file path")

    has_targets = split != "test1"
    triplets = [_parse_record(record, index, captions_file, has_targets) for index, record in enumerate(records)]
    if not triplets:
        raise ValueError(f"{captions_file} holds no queries")
    counts = Counter(t.pairid for t in triplets)
    repeated = sorted(pairid for pairid, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"{captions_file}: pairids must be unique; {len(repeated)} appear more than once "
                         f"({', '.join(map(str, repeated[:5]))})")
    listed = set(name_to_relpath)
    unknown = sorted({name for t in triplets for name in (t.reference, t.target, *t.extras["members"])
                      if name is not None and name not in listed})
    if unknown:
        raise ValueError(f"{len(unknown)} images used in {captions_file} are not listed in {split_file} "
                         f"(first: {unknown[0]})")

    real_root = image_root.resolve()
    for name, relpath in name_to_relpath.items():
        reason = outside_root(real_root, PurePosixPath(relpath))
        if reason:
            raise PathOutsideRootError(f"{split_file}: image {name!r} has path {relpath!r:.200}, which {reason}; "
                                       f"image paths must stay inside {image_root}")
    image_paths = {name: image_root / PurePosixPath(relpath) for name, relpath in name_to_relpath.items()}
    if check_images:
        missing = [name for name, path in image_paths.items() if not path.is_file()]
        if missing:
            folders = sorted({str(PurePosixPath(name_to_relpath[name]).parts[0]) for name in missing})
            where = ", ".join(str(image_root / folder) for folder in folders)
            raise FileNotFoundError(
                f"{len(missing)} of {len(image_paths)} images listed in "
                f"{split_file.relative_to(data_root)} are missing under {where} "
                f"(first: {image_paths[missing[0]]})"
            )
    return TripletSplit(name=f"cirr/{split}", triplets=triplets, image_paths=image_paths,
                        gallery=list(name_to_relpath), exclude_reference=True)


def open_cirr(data_root: Path, split: str, category: str | None, check_images: bool) -> BenchmarkSource:
    if category:
        raise ValueError("--category applies to FashionIQ only")
    return BenchmarkSource("cirr", read_cirr(data_root, split, check_images=check_images),
                           lambda triplet: keyword_groups(triplet.caption), first_groups=(VIEW_ANGLE,))


def _read_for_training(root: Path, split: str, options: NoOptions, for_training: bool = False,
                       descriptions: bool = False) -> TripletSplit:
    return read_cirr(root, split)


SPEC = DatasetSpec(name="cirr", open=open_cirr, splits=CIRR_SPLITS, default_split="val",
                   read_split=_read_for_training, protocol="cirr", headline_metric="average")
