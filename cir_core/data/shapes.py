"""The synthetic "shapes" composed-image-retrieval benchmark (in the style of CSS, Vo et al. 2019).

This module writes a benchmark folder and reads its splits; the scene model lives in
`shapes_scene`, the edits in `shapes_edits`, the split sampling in `shapes_splits`, and
their public names are re-exported here. A folder holds:

    info.json            {"benchmark": "shapes", "version": 1, "seed", "image_size", "splits": {split: counts},
                          "held_out": {"combinations", "phrasings"}, "edit_types", "vocabulary", ...}
    images/<id>.png      one per unique scene across all splits (id = hash of the scene label)
    scenes.json          {id: {"objects": [{"row", "col", "shape", "color", "size"}, ...]}}
    <split>.json         [{"pairid", "reference", "target", "caption", "edit", "novel"}, ...]
    gallery_<split>.json [id, ...]
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cir_core.data.folders import (IMAGES_DIR, INFO_FILE, WriteSummary, check_destination, check_split_images,
                                   write_json)
from cir_core.data.shapes_edits import (
    EDIT_TYPES,
    HELD_OUT_PHRASINGS,
    PHRASINGS,
    AppliedEdit,
    apply_edit,
    edit_scene,
    perturb_one_attribute,
    refer,
)
from cir_core.data.shapes_scene import (
    COLORS,
    DEFAULT_IMAGE_SIZE,
    GRID,
    HELD_OUT_COMBINATIONS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    NUM_CELL_CLASSES,
    POSITIONS,
    REGION_CLASSES,
    SHAPES,
    SIZES,
    SceneObject,
    ShapesScene,
    cell_labels,
    describe_scene,
    region_attributes,
    render_scene,
    sample_scene,
)
from cir_core.data.shapes_splits import SPLITS, ShapesCounts, ShapesQuery, ShapesSplitPlan, plan_splits
from cir_core.data.triplets import Triplet, TripletSplit

logger = logging.getLogger(__name__)

BENCHMARK = "shapes"
VERSION = 1
SCENES_FILE = "scenes.json"
TRIPLET_KEYS = ("pairid", "reference", "target", "caption", "edit", "novel")
# Below this many images a worker pool costs more to start than it saves.
_POOL_MIN_IMAGES = 2000
_CHUNK = 500




# ---------------------------------------------------------------------------------------------- writing
def _render_chunk(job: tuple[list[ShapesScene], int, str]) -> int:
    scenes, image_size, images_dir = job
    for scene in scenes:
        render_scene(scene, image_size).save(Path(images_dir) / f"{scene.id}.png", compress_level=1)
    return len(scenes)


def _render_all(scenes: list[ShapesScene], image_size: int, images_dir: Path, workers: int, progress: bool) -> None:
    jobs = [(scenes[i:i + _CHUNK], image_size, str(images_dir)) for i in range(0, len(scenes), _CHUNK)]
    with tqdm(total=len(scenes), desc="rendering shapes", unit="img", disable=not progress) as bar:
        if workers > 1 and len(scenes) >= _POOL_MIN_IMAGES:
            with multiprocessing.Pool(workers) as pool:
                for done in pool.imap_unordered(_render_chunk, jobs):
                    bar.update(done)
        else:
            for job in jobs:
                bar.update(_render_chunk(job))


def _info(seed: int, image_size: int, counts: ShapesCounts, plans: dict[str, ShapesSplitPlan],
          images: int) -> dict[str, Any]:
    return {
        "benchmark": BENCHMARK,
        "version": VERSION,
        "seed": seed,
        "image_size": image_size,
        "splits": {
            name: {"triplets": len(plan.queries), "references": len({q.reference.id for q in plan.queries}),
                   "gallery": len(plan.gallery), "novel": sum(q.novel for q in plan.queries)}
            for name, plan in plans.items()
        },
        "images": images,
        "sampling": {key: value for key, value in asdict(counts).items() if key not in SPLITS},
        "held_out": {
            "combinations": [{"shape": shape, "color": color} for shape, color in HELD_OUT_COMBINATIONS],
            "phrasings": dict(HELD_OUT_PHRASINGS),
        },
        "edit_types": list(EDIT_TYPES),
        "vocabulary": {"shapes": list(SHAPES), "colors": {name: list(rgb) for name, rgb in COLORS.items()},
                       "sizes": list(SIZES), "positions": list(POSITIONS)},
        "viewpoint_note": "objects are always drawn upright; mirror and rotate edits move objects between cells only",
    }


def write_shapes_dataset(out_dir: str | Path, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                         counts: ShapesCounts | None = None, progress: bool = True, workers: int = 2,
                         overwrite: bool = False) -> WriteSummary:
    """Sample, render and write the benchmark to `out_dir`, atomically.

    Everything is written to a hidden folder beside `out_dir` and renamed into place at
    the end, so an interrupted build never leaves a half-written dataset. `overwrite`
    replaces an existing shapes dataset (and nothing else).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    counts = counts or ShapesCounts()
    counts.validate()
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too small (minimum {MIN_IMAGE_SIZE})")
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too large (maximum {MAX_IMAGE_SIZE})")
    check_destination(out_dir, overwrite, BENCHMARK)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        plans = plan_splits(seed, counts, progress=progress)
        scenes: dict[str, ShapesScene] = {}
        for plan in plans.values():
            for scene in plan.gallery:
                scenes.setdefault(scene.id, scene)
        (staging / IMAGES_DIR).mkdir()
        render_start = time.perf_counter()
        _render_all([scenes[i] for i in sorted(scenes)], image_size, staging / IMAGES_DIR, workers, progress)
        render_seconds = time.perf_counter() - render_start
        write_json(staging / SCENES_FILE, {scene_id: scenes[scene_id].to_dict() for scene_id in sorted(scenes)})
        for name, plan in plans.items():
            write_json(staging / f"{name}.json", [
                {"pairid": pairid, "reference": q.reference.id, "target": q.target.id, "caption": q.caption,
                 "edit": q.edit, "novel": q.novel}
                for pairid, q in enumerate(plan.queries)
            ])
            write_json(staging / f"gallery_{name}.json", [scene.id for scene in plan.gallery])
        (staging / INFO_FILE).write_text(json.dumps(_info(seed, image_size, counts, plans, len(scenes)), indent=2))
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary = WriteSummary(
        path=out_dir, images=len(scenes), render_seconds=render_seconds,
        total_seconds=time.perf_counter() - start,
        triplets={name: len(plan.queries) for name, plan in plans.items()},
        gallery={name: len(plan.gallery) for name, plan in plans.items()},
    )
    logger.info("wrote %s: %d images in %.1f s (%.0f images/s)", out_dir, summary.images, render_seconds,
                summary.images_per_second)
    return summary


def _move_into_place(staging: Path, out_dir: Path) -> None:
    staging.chmod(0o755)  # mkdtemp creates owner-only folders; a dataset is meant to be shared
    if out_dir.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(retired / out_dir.name)
        staging.rename(out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out_dir)


# ---------------------------------------------------------------------------------------------- reading
def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from error


def read_shapes_info(data_dir: str | Path) -> dict[str, Any]:
    """The folder's info.json, checked to describe a shapes dataset of a known version."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"shapes dataset folder {data_dir} does not exist")
    info_path = data_dir / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{data_dir} is not a shapes dataset: {info_path} is missing "
                                "(create one with `cir data shapes --out DIR`)")
    info = _read_json(info_path, "shapes dataset info")
    if not isinstance(info, dict) or info.get("benchmark") != BENCHMARK:
        raise ValueError(f"{info_path} does not describe a shapes dataset (benchmark is not {BENCHMARK!r})")
    if info.get("version") != VERSION:
        raise ValueError(f"{info_path}: unsupported shapes dataset version {info.get('version')!r} "
                         f"(this reader knows version {VERSION})")
    if not isinstance(info.get("splits", {}), dict):
        raise ValueError(f"{info_path}: \"splits\" must be an object of split name -> counts")
    return info


def read_shapes_scenes(data_dir: str | Path) -> dict[str, ShapesScene]:
    """Image id -> scene label, for every image of the folder (e.g. for cell labels)."""
    data_dir = Path(data_dir).expanduser().resolve()
    read_shapes_info(data_dir)
    path = data_dir / SCENES_FILE
    raw = _read_json(path, "shapes scene labels")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object mapping image ids to scenes")
    scenes = {}
    for scene_id, data in raw.items():
        scene = ShapesScene.from_dict(data)
        if scene.id != scene_id:
            raise ValueError(f"{path}: scene {scene_id!r} hashes to {scene.id!r}; the file is corrupt")
        scenes[scene_id] = scene
    return scenes


def export_split(data_dir: str | Path, split: str, out_dir: str | Path) -> Path:
    """Copy one split (queries, gallery images, their labels) into a new, smaller shapes folder.

    The result reads like any shapes folder that has only this split; the app ships the
    test split this way. Written atomically, like `write_shapes_dataset`.
    """
    data_dir, out_dir = Path(data_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    info = read_shapes_info(data_dir)
    source = read_shapes_split(data_dir, split)
    check_destination(out_dir, False, BENCHMARK)
    scenes = read_shapes_scenes(data_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / IMAGES_DIR).mkdir()
        for image_id in source.gallery:
            shutil.copyfile(source.path(image_id), staging / IMAGES_DIR / f"{image_id}.png")
        write_json(staging / SCENES_FILE, {i: scenes[i].to_dict() for i in source.gallery})
        shutil.copyfile(data_dir / f"{split}.json", staging / f"{split}.json")
        shutil.copyfile(data_dir / f"gallery_{split}.json", staging / f"gallery_{split}.json")
        info = {**info, "splits": {split: info["splits"][split]}, "images": len(source.gallery),
                "exported_from": {"split": split, "seed": info.get("seed")}}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2))
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _triplet(entry: Any, index: int, path: Path) -> Triplet:
    missing = [key for key in TRIPLET_KEYS if key not in entry] if isinstance(entry, dict) else list(TRIPLET_KEYS)
    if missing:
        raise ValueError(f"{path}: entry {index} lacks {missing}")
    fits = {"pairid": isinstance(entry["pairid"], int) and not isinstance(entry["pairid"], bool),
            "novel": isinstance(entry["novel"], bool),
            **{key: isinstance(entry[key], str) and entry[key].strip() != ""
               for key in ("reference", "target", "caption", "edit")}}
    for key, fit in fits.items():
        if not fit:
            expected = {"pairid": "a whole number", "novel": "true or false"}.get(key, "non-empty text")
            raise ValueError(f"{path}: entry {index} has {key} {entry[key]!r:.50}; expected {expected}")
    if entry["target"] == entry["reference"]:
        raise ValueError(f"{path}: entry {index} has its reference {entry['reference']!r} as its target")
    return Triplet(pairid=entry["pairid"], reference=entry["reference"], caption=entry["caption"],
                   target=entry["target"], edit=entry["edit"], extras={"novel": entry["novel"]})


def _check_unique(values: list, what: str, path: Path) -> None:
    """ValueError naming the values listed more than once (a repeat would change the metrics)."""
    repeated = sorted(str(value) for value, count in Counter(values).items() if count > 1)
    if repeated:
        raise ValueError(f"{path}: {what} must be unique; {len(repeated)} appear more than once "
                         f"({', '.join(repeated[:5])})")


def read_shapes_split(data_dir: str | Path, split: str, with_region_labels: bool = False,
                      with_descriptions: bool = False) -> TripletSplit:
    """One split of a shapes folder: its queries, absolute image paths and its gallery.

    `with_region_labels` also attaches per-cell attribute labels (shape, colour, size)
    of every query image, for auxiliary supervision of the vision encoder;
    `with_descriptions` attaches each gallery image's description ("large red circle top left; ...").

    Raises FileNotFoundError naming the missing file (or counting missing images),
    PathOutsideRootError for an image id naming a file outside the folder and ValueError
    for a folder that is not a shapes dataset or an unknown split.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    info = read_shapes_info(data_dir)
    available = sorted(info.get("splits", {}))
    if split not in available:
        raise ValueError(f"{data_dir} has no shapes split {split!r}; available: {available}")
    split_path = data_dir / f"{split}.json"
    entries = _read_json(split_path, f"shapes split {split!r}")
    gallery_path = data_dir / f"gallery_{split}.json"
    gallery = _read_json(gallery_path, f"shapes gallery of {split!r}")
    if not isinstance(entries, list):
        raise ValueError(f"{split_path}: expected a list of triplets")
    if not isinstance(gallery, list) or not all(isinstance(image_id, str) for image_id in gallery):
        raise ValueError(f"{gallery_path}: expected a list of image ids")
    _check_unique(gallery, "image ids", gallery_path)
    triplets = [_triplet(entry, index, split_path) for index, entry in enumerate(entries)]
    if not triplets:
        raise ValueError(f"{split_path} holds no queries")
    _check_unique([t.pairid for t in triplets], "pairids", split_path)
    check_split_images(data_dir, triplets, gallery, split_path, gallery_path)
    images_dir = data_dir / IMAGES_DIR
    result = TripletSplit(
        name=f"{BENCHMARK}/{split}",
        triplets=triplets,
        image_paths={image_id: images_dir / f"{image_id}.png" for image_id in gallery},
        gallery=list(gallery),
        exclude_reference=True,
    )
    missing = result.missing_images()
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(gallery)} images of {result.name} are missing under "
                                f"{images_dir} (first: {missing[0]}.png)")
    scenes = read_shapes_scenes(data_dir) if (with_region_labels or with_descriptions) else {}
    if with_descriptions:
        result.image_captions = {image_id: describe_scene(scenes[image_id]) for image_id in gallery}
    if with_region_labels:
        used = {image_id for t in triplets for image_id in (t.reference, t.target)}
        result.region_labels = {image_id: region_attributes(scenes[image_id]) for image_id in used}
        result.region_grid, result.region_classes = GRID, REGION_CLASSES
    return result


__all__ = [
    "AppliedEdit", "COLORS", "DEFAULT_IMAGE_SIZE", "EDIT_TYPES", "HELD_OUT_COMBINATIONS", "HELD_OUT_PHRASINGS",
    "NUM_CELL_CLASSES", "PHRASINGS", "POSITIONS", "SHAPES", "SIZES", "SPLITS", "SceneObject", "ShapesCounts",
    "ShapesQuery", "ShapesScene", "ShapesSplitPlan", "apply_edit", "cell_labels",
    "edit_scene", "perturb_one_attribute", "plan_splits", "read_shapes_info", "read_shapes_scenes",
    "read_shapes_split", "refer", "render_scene", "sample_scene", "write_shapes_dataset",
]
