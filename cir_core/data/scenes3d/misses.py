"""How a scenes3d miss differs from its target: the right table seen from the wrong viewpoint,
the right viewpoint on the wrong table (the wrong edit), or something else.

Every image label names its table (`scene`) and camera pose (`camera`), so the first
result of a missed query is classified from the labels alone.
"""
from __future__ import annotations

from collections.abc import Callable

WRONG_VIEWPOINT = "right scene, wrong viewpoint"
WRONG_EDIT = "right viewpoint, wrong edit"
OTHER_MISS = "other"
MISS_KINDS = (WRONG_VIEWPOINT, WRONG_EDIT, OTHER_MISS)


def miss_kind(first: tuple[str, str], target: tuple[str, str]) -> str:
    """How a first result's (scene, camera) differs from the target's."""
    same_scene, same_camera = first[0] == target[0], first[1] == target[1]
    if same_scene and not same_camera:
        return WRONG_VIEWPOINT
    if same_camera and not same_scene:
        return WRONG_EDIT
    return OTHER_MISS


def miss_classifier(labels: dict[str, tuple[str, str]]) -> Callable[[str, str], str]:
    """(target id, first result's id) -> miss kind, from each image's (scene, camera)."""
    return lambda target_id, first_id: miss_kind(labels[first_id], labels[target_id])
