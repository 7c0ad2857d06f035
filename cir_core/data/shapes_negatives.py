"""Near-duplicate scenes (one attribute of one object changed) for hard-negative training.

Two scenes are near-duplicates when removing one object from each leaves the same rest
and the removed objects differ in exactly one way: at the same cell (colour, shape or
size changed) or identical apart from the cell (moved). Grouping scenes by those keys
finds every pair in one pass, without comparing all pairs.
"""
from __future__ import annotations

from collections import defaultdict

from cir_core.data.shapes_scene import SceneObject, ShapesScene


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
