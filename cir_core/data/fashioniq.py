"""FashionIQ (Wu et al., CVPR 2021): the reader and the dataset's `SPEC`.

Layout of DATA_ROOT (the official `fashionIQ_dataset` folder):

    captions/cap.<category>.<split>.json      [{"candidate", "target", "captions": [c1, c2]}, ...]
    image_splits/split.<category>.<split>.json [image id, ...]
    images/<id>.png (or .jpg)

Each category (dress, shirt, toptee) is evaluated on its own gallery: the category's
image split. The reference stays in the gallery (official protocol).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cir_core.data.query_groups import keyword_groups
from cir_core.data.spec import BenchmarkSource, DatasetSpec
from cir_core.data.triplets import Triplet, TripletSplit, merge_splits, subsample
from cir_core.safe_paths import PathOutsideRootError, outside_root

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_EXTENSIONS = (".png", ".jpg")
# The official code strips these from both ends of each caption before joining the two.
_CAPTION_EDGE_CHARACTERS = ".?, "


def join_captions(first: str, second: str) -> str:
    """The evaluation caption: "c1 and c2" (each caption's edge punctuation stripped, as official)."""
    return f"{first.strip(_CAPTION_EDGE_CHARACTERS)} and {second.strip(_CAPTION_EDGE_CHARACTERS)}"


def caption_variants(first: str, second: str) -> tuple[str, ...]:
    """The four training captions the official code draws from uniformly: both orders and each alone."""
    first, second = first.strip(_CAPTION_EDGE_CHARACTERS), second.strip(_CAPTION_EDGE_CHARACTERS)
    return (f"{first} and {second}", f"{second} and {first}", first, second)


def read_json(path: Path, data_root: Path) -> Any:
    """Parsed JSON of an annotation file; errors name the file relative to the data root."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} is missing (data root {data_root})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _image_path(images_dir: Path, image_id: str) -> Path | None:
    for extension in IMAGE_EXTENSIONS:
        path = images_dir / f"{image_id}{extension}"
        if path.is_file():
            return path
    return None


def _parse_record(record: Any, index: int, source: Path) -> tuple[str, str | None, tuple[str, str]]:
    if not isinstance(record, dict) or "candidate" not in record or "captions" not in record:
        raise ValueError(f"{source}: record {index} must be an object with 'candidate' and 'captions'; got {record!r:.200}")
    captions = record["captions"]
    if not (isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)):
        raise ValueError(f"{source}: record {index} must have exactly two caption strings; got {captions!r:.200}")
    candidate, target = record["candidate"], record.get("target")
    if not isinstance(candidate, str) or not candidate:
        raise ValueError(f"{source}: record {index} has candidate {candidate!r:.50}; expected an image id")
    if target is not None and (not isinstance(target, str) or not target):
        raise ValueError(f"{source}: record {index} has target {target!r:.50}; expected an image id")
    if target == candidate:
        raise ValueError(f"{source}: record {index} has its candidate {candidate!r} as its target")
    return candidate, target, (captions[0], captions[1])


def read_fashioniq(data_root: str | Path, category: str, split: str, check_images: bool = True) -> TripletSplit:
    """One category's split as a `TripletSplit` (pairid = record index; target None without targets).

    `check_images=False` reads annotations only (image paths then assume .png).
    Raises FileNotFoundError naming the missing annotation file or how many images are missing,
    and PathOutsideRootError for an image id whose file would lie outside `data_root`.
    """
    if category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"unknown FashionIQ category {category!r}; choose from {', '.join(FASHIONIQ_CATEGORIES)}")
    data_root = Path(data_root)
    captions_file = data_root / "captions" / f"cap.{category}.{split}.json"
    split_file = data_root / "image_splits" / f"split.{category}.{split}.json"
    records = read_json(captions_file, data_root)
    gallery = read_json(split_file, data_root)
    if not isinstance(records, list):
        raise ValueError(f"{captions_file} must hold a list of records; got {type(records).__name__}")
    if not isinstance(gallery, list) or not all(isinstance(i, str) and i for i in gallery):
        raise ValueError(f"{split_file} must hold a list of image ids")
    repeated = sorted(image_id for image_id, count in Counter(gallery).items() if count > 1)
    if repeated:  # a repeated gallery image would be ranked twice and change the metrics
        raise ValueError(f"{split_file}: image ids must be unique; {len(repeated)} appear more than once "
                         f"({', '.join(repeated[:5])})")
    if not records:
        raise ValueError(f"{captions_file} holds no queries")

    triplets = []
    for index, record in enumerate(records):
        reference, target, (first, second) = _parse_record(record, index, captions_file)
        triplets.append(Triplet(
            pairid=index, reference=reference, target=target,
            caption=join_captions(first, second), edit=category, caption_variants=caption_variants(first, second),
        ))

    image_ids = list(dict.fromkeys([*gallery, *(t.reference for t in triplets),
                                    *(t.target for t in triplets if t.target is not None)]))
    images_dir = data_root / "images"
    real_root = data_root.resolve()
    image_paths: dict[str, Path] = {}
    missing = []
    for image_id in image_ids:
        path = _image_path(images_dir, image_id) if check_images else images_dir / f"{image_id}.png"
        reason = outside_root(real_root, PurePosixPath("images", f"{image_id}{path.suffix if path else '.png'}"))
        if reason:
            raise PathOutsideRootError(f"{split_file} or {captions_file} names image {image_id!r:.200}, whose file "
                                       f"{reason}; images must stay inside {data_root}")
        if path is None:
            missing.append(image_id)
        else:
            image_paths[image_id] = path
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(image_ids)} images listed in {split_file.relative_to(data_root)} and "
            f"{captions_file.relative_to(data_root)} are missing under {images_dir} "
            f"(looked for <id>.png and <id>.jpg; first: {missing[0]})"
        )
    return TripletSplit(name=f"fashioniq-{category}/{split}", triplets=triplets, image_paths=image_paths,
                        gallery=list(gallery), exclude_reference=False)


@dataclass(frozen=True)
class FashionIQOptions:
    """Training options of FashionIQ."""

    categories: tuple[str, ...] = FASHIONIQ_CATEGORIES  # the categories trained jointly (each validated alone)

    def validate(self, where: str = "data.options") -> None:
        unknown = [c for c in self.categories if c not in FASHIONIQ_CATEGORIES]
        if not self.categories or unknown or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"{where}.categories must be distinct names among {', '.join(FASHIONIQ_CATEGORIES)}, "
                             f"got {list(self.categories)!r}")


def open_fashioniq(data_root: Path, split: str, category: str | None, check_images: bool) -> BenchmarkSource:
    """One category, or all three in one gallery (their union) with the category as a group.

    The official protocol ranks each category's gallery on its own (`cir eval fashioniq`);
    the union lets one app serve every category, so ranks there can be lower.
    """
    if category is not None and category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"unknown FashionIQ category {category!r}; choose from {', '.join(FASHIONIQ_CATEGORIES)}")
    categories = (category,) if category else FASHIONIQ_CATEGORIES
    parts = [read_fashioniq(data_root, name, split, check_images=check_images) for name in categories]
    triplets = [Triplet(pairid=f"{name}-{t.pairid}", reference=t.reference, caption=t.caption, target=t.target,
                        edit=name, caption_variants=t.caption_variants)
                for name, part in zip(categories, parts) for t in part.triplets]
    image_paths = {image_id: path for part in parts for image_id, path in part.image_paths.items()}
    gallery = list(dict.fromkeys(image_id for part in parts for image_id in part.gallery))
    merged = TripletSplit(name=f"fashioniq-{category}/{split}" if category else f"fashioniq/{split}",
                          triplets=triplets, image_paths=image_paths, gallery=gallery, exclude_reference=False)
    return BenchmarkSource("fashioniq", merged, lambda triplet: (triplet.edit,) + keyword_groups(triplet.caption),
                           first_groups=FASHIONIQ_CATEGORIES)


def _read_for_training(root: Path, split: str, options: FashionIQOptions, for_training: bool = False,
                       descriptions: bool = False) -> TripletSplit:
    """The categories of the options, trained jointly."""
    return merge_splits([read_fashioniq(root, category, split) for category in options.categories],
                        f"fashioniq/{split}")


def _validation(spec: DatasetSpec, root: Path, split: str, options: FashionIQOptions,
                max_queries: int) -> dict[str, TripletSplit]:
    """One split per category: each is ranked against its own gallery, as the official protocol does."""
    return {c: subsample(read_fashioniq(root, c, split), max_queries) for c in options.categories}


SPEC = DatasetSpec(name="fashioniq", open=open_fashioniq, splits=("train", "val", "test"), default_split="val",
                   read_split=_read_for_training, protocol="fashioniq", headline_metric="average",
                   options=FashionIQOptions, read_validation=_validation)
