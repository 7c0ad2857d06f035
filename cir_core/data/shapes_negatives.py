"""Look-alike scenes for hard-negative training.

Near-duplicates (one attribute of one object changed) are found among existing scenes;
position look-alikes (same objects, another layout) are made and rendered on demand.

Two scenes are near-duplicates when removing one object from each leaves the same rest
and the removed objects differ in exactly one way: at the same cell (colour, shape or
size changed) or identical apart from the cell (moved). Grouping scenes by those keys
finds every pair in one pass, without comparing all pairs.
"""
from __future__ import annotations

import random
from collections import defaultdict

from PIL import Image

from cir_core.data.shapes_scene import SceneObject, ShapesScene, render_scene


def _one_attribute_apart(a: SceneObject, b: SceneObject) -> bool:
    same_cell = a.cell == b.cell
    differences = (a.shape != b.shape) + (a.color != b.color) + (a.size != b.size)
    return (same_cell and differences == 1) or (not same_cell and differences == 0)


def near_duplicates(scenes: dict[str, ShapesScene], of: set[str]) -> dict[str, list[str]]:
    """For each id in `of`, the ids of `scenes` exactly one attribute of one object away (sorted)."""
    groups: dict[tuple, list[tuple[str, SceneObject]]] = defaultdict(list)
    for scene_id, scene in scenes.items():
        for obj in scene.objects:
            rest = tuple(o for o in scene.objects if o is not obj)
            groups[rest].append((scene_id, obj))
    found: dict[str, set[str]] = defaultdict(set)
    for members in groups.values():
        if len(members) < 2:
            continue
        for scene_id, obj in members:
            if scene_id not in of:
                continue
            for other_id, other in members:
                if other_id != scene_id and _one_attribute_apart(obj, other):
                    found[scene_id].add(other_id)
    return {scene_id: sorted(ids) for scene_id, ids in found.items()}


def position_look_alike(scene: ShapesScene, rng: random.Random) -> ShapesScene | None:
    """The same objects with the layout changed: one object moved to an empty cell, or two swapped.

    Such a scene differs from `scene` only in where things are, which in-batch negatives
    almost never do: training against it makes the image vectors keep the layout.
    None when the layout cannot change (a full grid of identical objects).
    """
    objects = list(scene.objects)
    swappable = [(a, b) for i, a in enumerate(objects) for b in objects[i + 1:] if a.appearance != b.appearance]
    empty = scene.empty_cells()
    if swappable and (not empty or rng.random() < 0.5):
        a, b = rng.choice(swappable)
        moved = [o for o in objects if o not in (a, b)] + [
            SceneObject(b.row, b.col, *a.appearance), SceneObject(a.row, a.col, *b.appearance)]
        return ShapesScene(tuple(moved))
    if not empty:
        return None
    obj = rng.choice(objects)
    row, col = rng.choice(empty)
    return scene.replace(obj, SceneObject(row, col, *obj.appearance))


class PositionLookAlikes:
    """Makes and renders, for training targets, scenes that differ from them only in layout."""

    def __init__(self, scenes: dict[str, ShapesScene], image_size: int):
        self.scenes, self.image_size = scenes, image_size

    def sample(self, target_ids: list[str], count: int, rng: random.Random, avoid: set[str]) -> list[ShapesScene]:
        """Look-alikes of up to `count` distinct random targets, none with an id in `avoid` (the batch targets)."""
        avoid = set(avoid)
        chosen = []
        for target_id in rng.sample(target_ids, len(target_ids)):
            if len(chosen) == count:
                break
            scene = self.scenes.get(target_id)
            if scene is None:
                raise KeyError(f"no scene label for training target {target_id!r}")
            look_alike = position_look_alike(scene, rng)
            if look_alike is not None and look_alike.id not in avoid:
                avoid.add(look_alike.id)
                chosen.append(look_alike)
        return chosen

    def render(self, scenes: list[ShapesScene]) -> list[Image.Image]:
        return [render_scene(scene, self.image_size) for scene in scenes]
