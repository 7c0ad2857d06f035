"""Reading a scenes3d folder back: one split as a `TripletSplit`, and each image's labels.

Every check a hostile or damaged folder needs happens here, so that the app, the trainer
and the evaluator can trust what they get: the folder says it is a scenes3d benchmark of a
version this code reads, every id names a file inside the folder, queries point into their
split's gallery, and the groups, scene and camera labels are text.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cir_core.data.folders import IMAGES_DIR, check_split_images
from cir_core.data.triplets import Triplet, TripletSplit

BENCHMARK = "scenes3d"
READABLE_VERSIONS = (1,)
# Per-query keys the evaluator and the failure view read (strings naming a table or a camera pose).
LABEL_KEYS = ("reference_scene", "reference_camera", "target_scene", "target_camera")
# Image file suffixes a folder may name in info.json ("image_format"); folders without one hold PNG.
IMAGE_SUFFIXES = ("png", "webp")
MAX_ANNOTATION_BYTES = 256 * 2**20  # a folder's largest JSON file is a few MB; more is not a scenes3d folder


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a scenes3d folder (`cir data scenes3d --out DIR` writes one)")
    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise ValueError(f"{path}: {what} is larger than {MAX_ANNOTATION_BYTES // 2**20} MB; not a scenes3d file")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: {what} is not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{path}: {what} is nested too deeply to be a scenes3d file") from None


def read_scenes3d_info(data_dir: str | Path) -> dict[str, Any]:
    """info.json of a scenes3d folder; ValueError when the folder holds another benchmark or version."""
    path = Path(data_dir) / "info.json"
    info = _read_json(path, "info.json")
    if not isinstance(info, dict) or info.get("benchmark") != BENCHMARK:
        raise ValueError(f"{path}: not a scenes3d benchmark (its info.json names {info.get('benchmark')!r})"
                         if isinstance(info, dict) else f"{path}: expected an object")
    if info.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: scenes3d version {info.get('version')!r}; this code reads {READABLE_VERSIONS}")
    if info.setdefault("image_format", "png") not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: image format {info['image_format']!r:.40}; this code reads {IMAGE_SUFFIXES}")
    return info


def read_scenes3d_labels(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """scenes.json: image id -> {"scene", "camera", "view", "objects", "visible", "description"}."""
    path = Path(data_dir) / "scenes.json"
    scenes = _read_json(path, "scenes.json")
    if not isinstance(scenes, dict):
        raise ValueError(f"{path}: expected an object of image ids")
    for image_id, label in scenes.items():
        if not isinstance(label, dict) or not all(isinstance(label.get(key), str)
                                                  for key in ("scene", "camera", "description")):
            raise ValueError(f"{path}: image {image_id!r:.80} has no scene, camera and description text")
    return scenes


def _triplet(entry: Any, index: int, path: Path) -> Triplet:
    where = f"{path}: query {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not an object")
    for key in ("reference", "target", "caption", "edit"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ValueError(f"{where}: {key!r} must be non-empty text")
    groups = entry.get("groups")
    if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
        raise ValueError(f"{where}: 'groups' must be a list of group names")
    labels = {key: entry.get(key) for key in LABEL_KEYS}
    if not all(isinstance(value, str) for value in labels.values()):
        raise ValueError(f"{where}: {', '.join(LABEL_KEYS)} must be text")
    if not isinstance(entry.get("pairid"), (int, str)) or isinstance(entry.get("pairid"), bool):
        raise ValueError(f"{where}: 'pairid' must be a number or text")
    novel = bool(entry.get("novel", False))
    return Triplet(pairid=entry["pairid"], reference=entry["reference"], caption=entry["caption"],
                   target=entry["target"], edit=entry["edit"],
                   extras={"groups": tuple(groups), "novel": novel, **labels})


def read_scenes3d_split(data_dir: str | Path, split: str, with_descriptions: bool = False,
                        labels: dict[str, dict[str, Any]] | None = None) -> TripletSplit:
    """One split of a scenes3d folder: its queries (with their groups and scene/camera labels in
    `extras`), image paths and gallery; `with_descriptions` attaches each image's description (from
    `labels` when the caller has read them already, else from scenes.json).

    Raises FileNotFoundError naming a missing file (or counting missing images),
    PathOutsideRootError for an id naming a file outside the folder, and ValueError for a
    folder that is not scenes3d, an unknown split or damaged annotations.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    info = read_scenes3d_info(data_dir)
    available = sorted(info.get("splits", {})) if isinstance(info.get("splits"), dict) else []
    if split not in available:
        raise ValueError(f"{data_dir} has no scenes3d split {split!r}; available: {available}")
    split_path, gallery_path = data_dir / f"{split}.json", data_dir / f"gallery_{split}.json"
    entries = _read_json(split_path, f"split {split!r}")
    gallery = _read_json(gallery_path, f"gallery of {split!r}")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{split_path}: expected a non-empty list of queries")
    if not isinstance(gallery, list) or not all(isinstance(image_id, str) for image_id in gallery):
        raise ValueError(f"{gallery_path}: expected a list of image ids")
    if len(set(gallery)) != len(gallery):
        raise ValueError(f"{gallery_path}: an image id is listed twice")
    triplets = [_triplet(entry, index, split_path) for index, entry in enumerate(entries)]
    if len({str(t.pairid) for t in triplets}) != len(triplets):
        raise ValueError(f"{split_path}: a pairid is used twice")
    check_split_images(data_dir, triplets, gallery, split_path, gallery_path)
    images, suffix = data_dir / IMAGES_DIR, info["image_format"]
    result = TripletSplit(name=f"{BENCHMARK}/{split}", triplets=triplets,
                          image_paths={image_id: images / f"{image_id}.{suffix}" for image_id in gallery},
                          gallery=list(gallery), exclude_reference=True)
    missing = result.missing_images()
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(gallery)} images of {result.name} are missing under "
                                f"{images} (first: {missing[0]}.{suffix})")
    if with_descriptions:
        labels = labels if labels is not None else read_scenes3d_labels(data_dir)
        unlabelled = [image_id for image_id in gallery if image_id not in labels]
        if unlabelled:
            raise ValueError(f"{data_dir / 'scenes.json'} lacks {len(unlabelled)} gallery images "
                             f"(first: {unlabelled[0]!r:.80})")
        result.image_captions = {image_id: labels[image_id]["description"] for image_id in gallery}
    return result
