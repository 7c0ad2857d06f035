"""What the synthetic benchmarks' folders (shapes, scenes3d) share: writing them and checking a split.

A folder holds info.json (naming its benchmark), images/<id>.<png|webp>, <split>.json (queries)
and gallery_<split>.json (image ids); the writers build it in a staging folder
(`cir_core.atomic`) and refuse to replace anything but a folder of the same benchmark.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cir_core.data.triplets import Triplet
from cir_core.safe_paths import PathOutsideRootError, outside_root

INFO_FILE = "info.json"
IMAGES_DIR = "images"


def data_fingerprint(folder: Path) -> str | None:
    """sha256 (16 hex digits) over a benchmark folder's info.json, scenes.json and every split's
    query and gallery files, each prefixed by its name; None for a folder without info.json.
    The images are left out: they are drawn from scenes.json with the seed and settings that
    info.json records, and hashing them would read thousands of files."""
    folder = Path(folder)
    if not (folder / INFO_FILE).is_file():
        return None
    info = json.loads((folder / INFO_FILE).read_text())
    splits = sorted(info.get("splits", {})) if isinstance(info, dict) else []
    names = [INFO_FILE, "scenes.json"] + [f"{prefix}{split}.json" for split in splits for prefix in ("", "gallery_")]
    digest = hashlib.sha256()
    for name in names:
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class WriteSummary:
    """What a benchmark writer produced and how long it took."""

    path: Path  # the dataset folder
    images: int  # unique images rendered (one PNG each)
    render_seconds: float  # wall time spent rendering (and describing) and saving the images
    total_seconds: float  # wall time of the whole build (sampling, rendering, JSON, rename)
    triplets: dict[str, int]  # split -> number of queries
    gallery: dict[str, int]  # split -> number of gallery images

    @property
    def images_per_second(self) -> float:
        return self.images / self.render_seconds if self.render_seconds > 0 else float("inf")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")))


def check_destination(out_dir: Path, overwrite: bool, benchmark: str) -> None:
    """FileExistsError unless `out_dir` is absent, empty, or (with `overwrite`) a `benchmark` folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose a new folder or overwrite it (--overwrite)")
    try:
        named = json.loads((out_dir / INFO_FILE).read_text()).get("benchmark")
    except (OSError, ValueError, AttributeError, RecursionError):
        named = None
    if named != benchmark:
        raise FileExistsError(f"refusing to overwrite {out_dir}: it is not empty and not a {benchmark} dataset "
                              f"(no {INFO_FILE} naming benchmark {benchmark!r})")


def check_split_images(data_dir: Path, triplets: list[Triplet], gallery: list[str], split_path: Path,
                       gallery_path: Path) -> None:
    """ValueError when a query's reference or target is not in the gallery; PathOutsideRootError when
    a gallery id names a file outside `data_dir` (resolved) instead of one of its images."""
    in_gallery = set(gallery)
    strays = sorted({i for t in triplets for i in (t.reference, t.target) if i is not None and i not in in_gallery})
    if strays:
        raise ValueError(f"{split_path}: {len(strays)} reference/target ids are not in {gallery_path.name} "
                         f"(first: {strays[0]!r:.80}); the folder is damaged")
    for image_id in gallery:
        reason = outside_root(data_dir, PurePosixPath(IMAGES_DIR, f"{image_id}.png"))
        if reason:
            raise PathOutsideRootError(f"{gallery_path}: image id {image_id!r:.200} names a file that {reason}; "
                                       f"images must stay inside {data_dir}")
