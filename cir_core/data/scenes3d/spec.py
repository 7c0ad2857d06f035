"""The scenes3d benchmark as the rest of the code sees it: its `DatasetSpec`."""
from __future__ import annotations

import json
from pathlib import Path

from cir_core.data.scenes3d.misses import MISS_KINDS, miss_classifier
from cir_core.data.scenes3d.plan import GROUP_ORDER
from cir_core.data.scenes3d.read import read_scenes3d_labels, read_scenes3d_split
from cir_core.data.spec import BenchmarkSource, DatasetSpec, NoOptions
from cir_core.data.triplets import Triplet, TripletSplit


def scenes3d_groups(triplet: Triplet) -> tuple[str, ...]:
    """The groups stored with the query when it was planned ("view angle" for camera-only edits)."""
    return tuple(triplet.extras.get("groups", ()))


def open_scenes3d(data_root: Path, split: str, category: str | None, check_images: bool) -> BenchmarkSource:
    if category:
        raise ValueError("--category applies to FashionIQ only")
    triplets = read_scenes3d_split(data_root, split)
    labels = read_scenes3d_labels(data_root)
    known = [image_id for image_id in triplets.gallery if image_id in labels]
    views = {image_id: (labels[image_id]["scene"], labels[image_id]["camera"]) for image_id in known}
    return BenchmarkSource("scenes3d", triplets, scenes3d_groups, first_groups=GROUP_ORDER,
                           captions={image_id: labels[image_id]["description"] for image_id in known},
                           labels={image_id: json.dumps({"scene": scene, "camera": camera}, sort_keys=True)
                                   for image_id, (scene, camera) in views.items()},
                           classify_miss=miss_classifier(views), miss_kinds=MISS_KINDS)


def _read_for_training(root: Path, split: str, options: NoOptions, for_training: bool = False,
                       descriptions: bool = False) -> TripletSplit:
    return read_scenes3d_split(root, split, with_descriptions=descriptions)


SPEC = DatasetSpec(name="scenes3d", open=open_scenes3d, splits=("train", "val", "test"), default_split="test",
                   read_split=_read_for_training, protocol="grouped_recall", headline_metric="recall/R@1")
