"""Descriptions of rendered views: where the camera is, and what it sees in what relation.

    "seen from high up and far away: a large red metal cube left of a small blue matte sphere;
     the small blue matte sphere in front of a large green matte cylinder"

The visible objects are named from left to right as they appear in the image, each
after the first together with its relation to the one before, as seen from the camera
(camera.relation). An object the camera cannot see (hidden behind others) is left out:
a description says what the image shows.
"""
from __future__ import annotations

import numpy as np

from cir_core.data.scenes3d.camera import CameraPose, project, relation
from cir_core.data.scenes3d.scene import Scene3D

ELEVATION_WORDS = {"low": "from low down", "middle": "from halfway up", "high": "from high up"}
DISTANCE_WORDS = {"close": "close up", "medium": "at a middle distance", "far": "far away"}
# Below this visible share an object is not named: a sliver of it is not what a viewer would describe.
DESCRIBED_FROM = 0.1


def camera_words(pose: CameraPose) -> str:
    """"seen from high up and far away"."""
    return f"seen {ELEVATION_WORDS[pose.elevation]} and {DISTANCE_WORDS[pose.distance]}"


def describe_view(scene: Scene3D, pose: CameraPose, visible: list[float]) -> str:
    """The view in words; `visible` is each object's visible fraction (visibility.visible_fractions)."""
    shown = [obj for obj, fraction in zip(scene.objects, visible) if fraction >= DESCRIBED_FROM]
    shown.sort(key=lambda obj: project(pose, np.array([obj.x, obj.y, obj.radius]))[0])
    if not shown:
        return f"{camera_words(pose)}: an empty table"
    clauses = [f"a {shown[0].words()}"] if len(shown) == 1 else []
    for index, (previous, current) in enumerate(zip(shown, shown[1:])):
        seen, _ = relation(pose, (previous.x, previous.y), (current.x, current.y))
        clauses.append(f"{'a' if index == 0 else 'the'} {previous.words()} {seen} a {current.words()}")
    return f"{camera_words(pose)}: " + "; ".join(clauses)
