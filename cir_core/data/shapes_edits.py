"""Edits of the shapes benchmark: what each edit does to a scene label and how it is phrased.

Every edit yields a target different from its reference, and a caption that names the
target exactly: objects are referred to by colour and shape, plus the size when that
is ambiguous, or else plus the position ("the red circle in the top left").

One phrasing per caption family is held out of training (`HELD_OUT_PHRASINGS`); like
the held-out (shape, colour) combinations, this is part of the benchmark's definition.
"""
from __future__ import annotations

import random
from typing import NamedTuple

from cir_core.data.shapes_scene import (
    COLORS,
    HELD_OUT_COMBINATIONS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    SceneObject,
    ShapesScene,
    allowed_combinations,
    mirror_cell,
    position_name,
    rotate_clockwise_cell,
    rotate_counterclockwise_cell,
    rotate_half_turn_cell,
)

EDIT_TYPES = ("add", "remove", "color", "shape", "size", "move", "mirror", "rotate")

# Caption templates per family; the last one of each family is the held-out phrasing.
# Fields: {ref} an unambiguous reference to an object of the scene, {obj} "size colour shape",
# {pos} a position name, {color}, {shape}, and for size edits {comparative} (smaller/larger),
# {bigger} (smaller/bigger), {verb} (shrink/enlarge), {direction} (down/up), {adjective} (small/large).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("add a {obj} at the {pos}", "put a {obj} at the {pos}", "place a {obj} at the {pos}",
            "draw a {obj} at the {pos}", "there should also be a {obj} at the {pos}"),
    "remove": ("remove the {ref}", "delete the {ref}", "take away the {ref}", "get rid of the {ref}",
               "erase the {ref}"),
    "color": ("make the {ref} {color}", "change the {ref} to {color}", "paint the {ref} {color}",
              "color the {ref} {color}", "the {ref} should be {color}"),
    "shape": ("turn the {ref} into a {shape}", "change the {ref} into a {shape}", "make the {ref} a {shape}",
              "reshape the {ref} into a {shape}", "the {ref} should become a {shape}"),
    "size": ("make the {ref} {comparative}", "{verb} the {ref}", "the {ref} should be {bigger}",
             "scale the {ref} {direction}", "resize the {ref} to be {adjective}"),
    "move": ("move the {ref} to the {pos}", "shift the {ref} to the {pos}", "slide the {ref} over to the {pos}",
             "relocate the {ref} to the {pos}", "the {ref} should go to the {pos}"),
    "mirror": ("mirror the scene", "view it from the other side", "flip it left to right",
               "flip the scene horizontally", "show its mirror image"),
    "rotate_cw": ("rotate the scene clockwise", "turn it a quarter turn to the right", "rotate it 90 degrees clockwise",
                  "spin the scene a quarter turn to the right", "view it after a clockwise quarter turn"),
    "rotate_ccw": ("rotate the scene counter-clockwise", "turn it a quarter turn to the left",
                   "rotate it 90 degrees counterclockwise", "spin the scene a quarter turn to the left",
                   "view it after a counter-clockwise quarter turn"),
    "rotate_180": ("turn it upside down", "view it from the opposite side", "rotate it 180 degrees",
                   "spin the scene half a turn", "turn the scene around by half a turn"),
}
HELD_OUT_PHRASINGS: dict[str, str] = {family: templates[-1] for family, templates in PHRASINGS.items()}

_SIZE_WORDS = {
    "small": {"comparative": "smaller", "bigger": "smaller", "verb": "shrink", "direction": "down",
              "adjective": "small"},
    "large": {"comparative": "larger", "bigger": "bigger", "verb": "enlarge", "direction": "up",
              "adjective": "large"},
}
_ROTATIONS = (("rotate_cw", rotate_clockwise_cell), ("rotate_ccw", rotate_counterclockwise_cell),
              ("rotate_180", rotate_half_turn_cell))


class AppliedEdit(NamedTuple):
    """An edit of a reference scene (unpacks as target, caption, edit_type, novel)."""

    target: ShapesScene  # the edited scene; never equal to the reference
    caption: str  # relative caption that names the edit exactly
    edit_type: str  # one of EDIT_TYPES
    novel: bool  # a held-out combination (in reference or target) or a held-out phrasing is involved


def refer(scene: ShapesScene, obj: SceneObject) -> str:
    """The shortest of "colour shape", "size colour shape", "colour shape in the <position>" that is unique."""
    same = [o for o in scene.objects if o.combination == obj.combination]
    if len(same) == 1:
        return f"{obj.color} {obj.shape}"
    if sum(o.size == obj.size for o in same) == 1:
        return f"{obj.size} {obj.color} {obj.shape}"
    return f"{obj.color} {obj.shape} in the {position_name(obj.row, obj.col)}"


def _allowed(shape: str, color: str, train: bool) -> bool:
    return not (train and (shape, color) in HELD_OUT_COMBINATIONS)


# Each editor returns (target, caption family, template fields), or None when it cannot change the scene.
_EditPlan = tuple[ShapesScene, str, dict[str, str]] | None


def _add(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    if len(scene.objects) >= MAX_OBJECTS:
        return None
    row, col = rng.choice(scene.empty_cells())
    shape, color = rng.choice(allowed_combinations(train))
    new = SceneObject(row, col, shape, color, rng.choice(SIZES))
    target = ShapesScene(scene.objects + (new,))
    return target, "add", {"obj": f"{new.size} {new.color} {new.shape}", "pos": position_name(row, col)}


def _remove(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    if len(scene.objects) < 2:
        return None
    obj = rng.choice(scene.objects)
    return scene.replace(obj, None), "remove", {"ref": refer(scene, obj)}


def _recolor(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    obj = rng.choice(scene.objects)
    color = rng.choice([c for c in COLORS if c != obj.color and _allowed(obj.shape, c, train)])
    target = scene.replace(obj, SceneObject(obj.row, obj.col, obj.shape, color, obj.size))
    return target, "color", {"ref": refer(scene, obj), "color": color}


def _reshape(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    obj = rng.choice(scene.objects)
    shape = rng.choice([s for s in SHAPES if s != obj.shape and _allowed(s, obj.color, train)])
    target = scene.replace(obj, SceneObject(obj.row, obj.col, shape, obj.color, obj.size))
    return target, "shape", {"ref": refer(scene, obj), "shape": shape}


def _resize(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    obj = rng.choice(scene.objects)
    size = "large" if obj.size == "small" else "small"
    target = scene.replace(obj, SceneObject(obj.row, obj.col, obj.shape, obj.color, size))
    return target, "size", {"ref": refer(scene, obj), **_SIZE_WORDS[size]}


def _move(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    empty = scene.empty_cells()
    if not empty:
        return None
    obj = rng.choice(scene.objects)
    row, col = rng.choice(empty)
    target = scene.replace(obj, SceneObject(row, col, obj.shape, obj.color, obj.size))
    return target, "move", {"ref": refer(scene, obj), "pos": position_name(row, col)}


def _mirror(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    target = scene.map_cells(mirror_cell)
    return None if target == scene else (target, "mirror", {})


def _rotate(scene: ShapesScene, rng: random.Random, train: bool) -> _EditPlan:
    for family, mapping in rng.sample(_ROTATIONS, len(_ROTATIONS)):
        target = scene.map_cells(mapping)
        if target != scene:
            return target, family, {}
    return None


_EDITORS = {"add": _add, "remove": _remove, "color": _recolor, "shape": _reshape, "size": _resize, "move": _move,
            "mirror": _mirror, "rotate": _rotate}


def edit_scene(scene: ShapesScene, edit_type: str, rng: random.Random, train: bool = True) -> AppliedEdit | None:
    """Apply one edit of the given type, or None when it cannot change this scene.

    `train=True` keeps held-out combinations out of the target and held-out phrasings
    out of the caption; otherwise captions draw from every phrasing.
    """
    if edit_type not in _EDITORS:
        raise ValueError(f"unknown edit type {edit_type!r}; choose from {EDIT_TYPES}")
    if train and scene.has_held_out_combination():
        raise ValueError(f"training edits need a scene without held-out combinations {HELD_OUT_COMBINATIONS}")
    plan = _EDITORS[edit_type](scene, rng, train)
    if plan is None:
        return None
    target, family, fields = plan
    templates = [t for t in PHRASINGS[family] if not (train and t == HELD_OUT_PHRASINGS[family])]
    template = rng.choice(templates)
    novel = (template == HELD_OUT_PHRASINGS[family] or scene.has_held_out_combination()
             or target.has_held_out_combination())
    return AppliedEdit(target, template.format(**fields), edit_type, novel)


def apply_edit(scene: ShapesScene, rng: random.Random, train: bool = True) -> AppliedEdit:
    """A random edit (type uniform over those that change this scene); see `edit_scene`."""
    for edit_type in rng.sample(EDIT_TYPES, len(EDIT_TYPES)):
        edit = edit_scene(scene, edit_type, rng, train)
        if edit is not None:
            return edit
    raise ValueError(f"no edit changes scene {scene}")


def perturb_one_attribute(scene: ShapesScene, rng: random.Random, train: bool = True) -> ShapesScene:
    """A near-duplicate: one object's colour, shape, size or cell changed (a hard negative)."""
    obj = rng.choice(scene.objects)
    attributes = ["color", "shape", "size"] + (["position"] if scene.empty_cells() else [])
    attribute = rng.choice(attributes)
    row, col, shape, color, size = obj.row, obj.col, obj.shape, obj.color, obj.size
    if attribute == "color":
        color = rng.choice([c for c in COLORS if c != obj.color and _allowed(obj.shape, c, train)])
    elif attribute == "shape":
        shape = rng.choice([s for s in SHAPES if s != obj.shape and _allowed(s, obj.color, train)])
    elif attribute == "size":
        size = "large" if obj.size == "small" else "small"
    else:
        row, col = rng.choice(scene.empty_cells())
    return scene.replace(obj, SceneObject(row, col, shape, color, size))
