"""The shapes benchmark as the rest of the code sees it: its `DatasetSpec`."""
from __future__ import annotations

import json
from pathlib import Path

from cir_core.data.query_groups import VIEW_ANGLE
from cir_core.data.shapes import read_shapes_scenes, read_shapes_split
from cir_core.data.shapes_scene import describe_scene
from cir_core.data.shapes_training import ShapesOptions, ShapesTrainingExtras, read_training_split
from cir_core.data.spec import BenchmarkSource, DatasetSpec
from cir_core.data.triplets import Triplet

# mirror and rotate change the viewpoint of the whole scene: shapes' view-angle edits
VIEW_EDITS = ("mirror", "rotate")


def shapes_groups(triplet: Triplet) -> tuple[str, ...]:
    view = (VIEW_ANGLE,) if triplet.edit in VIEW_EDITS else ()
    novel = ("novel",) if triplet.extras.get("novel") else ()
    return (*view, triplet.edit or "", *novel)


def open_shapes(data_root: Path, split: str, category: str | None, check_images: bool) -> BenchmarkSource:
    if category:
        raise ValueError("--category applies to FashionIQ only")
    triplets = read_shapes_split(data_root, split)
    scenes = read_shapes_scenes(data_root)
    described = {image_id: scenes[image_id] for image_id in triplets.gallery if image_id in scenes}
    captions = {image_id: describe_scene(scene) for image_id, scene in described.items()}
    labels = {image_id: json.dumps(scene.to_dict(), sort_keys=True) for image_id, scene in described.items()}
    return BenchmarkSource("shapes", triplets, shapes_groups, first_groups=(VIEW_ANGLE, *VIEW_EDITS),
                           captions=captions, labels=labels)


SPEC = DatasetSpec(name="shapes", open=open_shapes, splits=("train", "val", "test"), default_split="test",
                   read_split=read_training_split, protocol="shapes", headline_metric="recall/R@1",
                   options=ShapesOptions, training_extras=ShapesTrainingExtras)
