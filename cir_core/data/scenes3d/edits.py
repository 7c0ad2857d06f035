"""Edits of the scenes3d benchmark: what each does to a scene label or a camera pose, and its phrasings.

Object edits change the table (add, remove, colour, material, size, shape, move); camera
edits change only where the camera stands (orbit left or right by 45, 90 or 180 degrees,
look from higher or lower, zoom in or out), always relative to the reference's camera,
because the round table has no front. A query may combine one of each; its caption then
names the object edit first, so that "to the left of" in it is as seen from the reference.

Objects are named by the fewest words that single them out ("the red cube", "the small
red cube", "the red metal cube", "the small red metal cube"): no two objects of a scene
look alike, so the longest name always does.

The last phrasing of every family is held out: only test captions use it, as only test
scenes hold the held-out (shape, colour) combinations. Both are part of the benchmark's
definition, not of a seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from cir_core.data.scenes3d.camera import DISTANCES, ELEVATIONS, RELATIONS, CameraPose, relation, spot_in_relation
from cir_core.data.scenes3d.scene import COLORS, GAP, HELD_OUT_COMBINATIONS, MATERIALS, MAX_OBJECTS, MIN_OBJECTS, \
    SHAPES, SIZES, Scene3D, SceneObject3D, place_new_object

OBJECT_EDITS = ("add", "remove", "color", "material", "size", "shape", "move")
CAMERA_EDITS = ("orbit", "height", "zoom")
ORBIT_DEGREES = (45, 90, 180)

# Caption templates per family; the last of each family is held out of train and val.
# Fields: {ref} and {anchor} name objects of the scene, {obj} is an object's full name,
# {rel} one of RELATIONS as a place ("to the left of"), the rest as named per family.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("add a {obj} {rel} the {anchor}", "put a {obj} {rel} the {anchor}", "place a {obj} {rel} the {anchor}",
            "there should also be a {obj} {rel} the {anchor}"),
    "remove": ("remove the {ref}", "take away the {ref}", "delete the {ref}", "get rid of the {ref}"),
    "color": ("make the {ref} {color}", "change the {ref} to {color}", "paint the {ref} {color}",
              "the {ref} should be {color}"),
    "material": ("make the {ref} {adjective}", "change the {ref} to {noun}", "give the {ref} a {finish} finish",
                 "the {ref} should look {look}"),
    "size": ("make the {ref} {comparative}", "{verb} the {ref}", "resize the {ref} to be {adjective}",
             "the {ref} should be {bigger}"),
    "shape": ("turn the {ref} into a {shape}", "change the {ref} into a {shape}", "make the {ref} a {shape}",
              "the {ref} should become a {shape}"),
    "move": ("move the {ref} {rel} the {anchor}", "put the {ref} {rel} the {anchor}",
             "shift the {ref} so it is {rel} the {anchor}", "the {ref} should be {rel} the {anchor}"),
    "orbit": ("orbit the camera {degrees} degrees to the {direction}",
              "walk {part} around the table to the {direction}",
              "move {degrees} degrees to the {direction} around the table",
              "view it from {degrees} degrees further to the {direction}"),
    "orbit_180": ("walk around to the other side", "view it from the opposite side of the table",
                  "orbit the camera 180 degrees", "circle halfway around the table"),
    "higher": ("look from higher up", "raise the camera", "move the camera up", "view it from a higher angle"),
    "lower": ("look from lower down", "lower the camera", "move the camera down", "view it from a lower angle"),
    "zoom_in": ("zoom in", "move the camera closer", "get closer to the table", "take a closer look"),
    "zoom_out": ("zoom out", "move the camera back", "step back from the table", "show it from further away"),
    "combined": ("{object} and {camera}", "{object}, then {camera}", "first {object}, and then {camera}",
                 "{object}; also {camera}"),
}
HELD_OUT_PHRASINGS: dict[str, str] = {family: templates[-1] for family, templates in PHRASINGS.items()}

PLACE_WORDS = {"left of": "to the left of", "right of": "to the right of", "in front of": "in front of",
               "behind": "behind"}
_MATERIAL_WORDS = {
    "metal": {"adjective": "metallic", "noun": "metal", "finish": "shiny metal", "look": "shiny"},
    "matte": {"adjective": "matte", "noun": "rubber", "finish": "matte", "look": "dull"},
}
_SIZE_WORDS = {
    "small": {"comparative": "smaller", "bigger": "smaller", "verb": "shrink", "adjective": "small"},
    "large": {"comparative": "larger", "bigger": "bigger", "verb": "enlarge", "adjective": "large"},
}
_ORBIT_PART = {45: "an eighth of the way", 90: "a quarter of the way"}
# A relation a caption asks for holds by at least this margin (see camera.relation): never a near-diagonal.
RELATION_MARGIN = 0.5
_TRIES = 40


@dataclass(frozen=True)
class Phrase:
    """A filled-in caption template."""

    text: str
    held_out: bool  # the template is a held-out one


def phrase(family: str, fields: dict[str, str], rng: random.Random, held_out: bool) -> Phrase:
    """One of the family's templates, filled in; held-out templates only when `held_out` allows them."""
    templates = [t for t in PHRASINGS[family] if held_out or t != HELD_OUT_PHRASINGS[family]]
    template = rng.choice(templates)
    return Phrase(template.format(**fields), template == HELD_OUT_PHRASINGS[family])


def refer(scene: Scene3D, obj: SceneObject3D) -> str:
    """The fewest words that single `obj` out in `scene` (without the article)."""
    for keys in (("color", "shape"), ("size", "color", "shape"), ("color", "material", "shape"),
                 ("size", "color", "material", "shape")):
        words = [getattr(obj, key) for key in keys]
        if sum(all(getattr(other, key) == word for key, word in zip(keys, words)) for other in scene.objects) == 1:
            return " ".join(words)
    raise ValueError(f"{obj.words()} is not in the scene once")


# ------------------------------------------------------------------------------------------ object edits
@dataclass(frozen=True)
class ObjectEdit:
    """One object edit of a reference scene."""

    kind: str  # one of OBJECT_EDITS
    target: Scene3D  # the edited scene, never equal to the reference
    before: SceneObject3D | None  # the edited object in the reference (None for add)
    after: SceneObject3D | None  # the edited object in the target (None for remove)
    anchor: SceneObject3D | None  # the object an added or moved one is placed relative to
    fields: dict[str, str] = field(compare=False)  # caption template fields

    def phrase(self, rng: random.Random, held_out: bool) -> Phrase:
        return phrase(self.kind, self.fields, rng, held_out)


def _allowed(shape: str, color: str, held_out: bool) -> bool:
    return held_out or (shape, color) not in HELD_OUT_COMBINATIONS


def _place_near(scene: Scene3D, obj: SceneObject3D, anchor: SceneObject3D, name: str, pose: CameraPose,
                rng: random.Random, ignoring: SceneObject3D | None) -> SceneObject3D | None:
    """`obj` put clearly `name` (one of RELATIONS) the `anchor` as seen from `pose`, or None when it does not fit."""
    for _ in range(_TRIES):
        distance = obj.footprint + anchor.footprint + GAP + rng.uniform(0.1, 0.9)
        spot = spot_in_relation(pose, (anchor.x, anchor.y), name, distance, rng.uniform(-0.3, 0.3) * distance)
        candidate = obj.moved(*spot)
        seen, margin = relation(pose, (candidate.x, candidate.y), (anchor.x, anchor.y))
        if seen == name and margin >= RELATION_MARGIN and scene.fits(candidate, ignoring=ignoring):
            return candidate
    return None


def _add(scene: Scene3D, pose: CameraPose, rng: random.Random, held_out: bool) -> ObjectEdit | None:
    if len(scene.objects) >= MAX_OBJECTS:
        return None
    template = place_new_object(scene.objects, rng, held_out)
    if template is None:
        return None
    anchor = rng.choice(scene.objects)
    name = rng.choice(RELATIONS)
    new = _place_near(scene, template, anchor, name, pose, rng, ignoring=None)
    if new is None:
        return None
    target = Scene3D(scene.objects + (new,))
    return ObjectEdit("add", target, None, new, anchor,
                      {"obj": new.words(), "rel": PLACE_WORDS[name], "anchor": refer(target, anchor)})


def _remove(scene: Scene3D, pose: CameraPose, rng: random.Random, held_out: bool) -> ObjectEdit | None:
    if len(scene.objects) <= MIN_OBJECTS:
        return None
    obj = rng.choice(scene.objects)
    return ObjectEdit("remove", scene.replace(obj, None), obj, None, None, {"ref": refer(scene, obj)})


def _changed(scene: Scene3D, obj: SceneObject3D, new: SceneObject3D) -> Scene3D | None:
    return scene.replace(obj, new) if scene.fits(new, ignoring=obj) else None


def _recolor(scene: Scene3D, pose: CameraPose, rng: random.Random, held_out: bool) -> ObjectEdit | None:
    obj = rng.choice(scene.objects)
    colors = [c for c in COLORS if c != obj.color and _allowed(obj.shape, c, held_out)]
    new = replace(obj, color=rng.choice(colors))
    target = _changed(scene, obj, new)
    return target and ObjectEdit("color", target, obj, new, None, {"ref": refer(scene, obj), "color": new.color})


def _rematerial(scene: Scene3D, pose: CameraPose, rng: random.Random, held_out: bool) -> ObjectEdit | None:
    obj = rng.choice(scene.objects)
    new = replace(obj, material=next(m for m in MATERIALS if m != obj.material))
    target = _changed(scene, obj, new)
    return target and ObjectEdit("material", target, obj, new, None,
                                 {"ref": refer(scene, obj), **_MATERIAL_WORDS[new.material]})


def _resize(scene: Scene3D, pose: CameraPose, rng: random.Random, held_out: bool) -> ObjectEdit | None:
    obj = rng.choice(scene.objects)
    new = replace(obj, size=next(s for s in SIZES if s != obj.size))
    target = _changed(scene, obj, new)
    return target and ObjectEdit("size", target, obj, new, None, {"ref": refer(scene, obj), **_SIZE_WORDS[new.size]})


def _reshape(scene: Scene3D, pose: CameraPose, rng: random.Random, held_out: bool) -> ObjectEdit | None:
    obj = rng.choice(scene.objects)
    shapes = [s for s in SHAPES if s != obj.shape and _allowed(s, obj.color, held_out)]
    new = replace(obj, shape=rng.choice(shapes))
    target = _changed(scene, obj, new)
    return target and ObjectEdit("shape", target, obj, new, None, {"ref": refer(scene, obj), "shape": new.shape})


def _move(scene: Scene3D, pose: CameraPose, rng: random.Random, held_out: bool) -> ObjectEdit | None:
    obj, anchor = rng.sample(scene.objects, 2)
    current, _ = relation(pose, (obj.x, obj.y), (anchor.x, anchor.y))
    name = rng.choice([r for r in RELATIONS if r != current])
    new = _place_near(scene, obj, anchor, name, pose, rng, ignoring=obj)
    if new is None:
        return None
    return ObjectEdit("move", scene.replace(obj, new), obj, new, anchor,
                      {"ref": refer(scene, obj), "rel": PLACE_WORDS[name], "anchor": refer(scene, anchor)})


_OBJECT_EDITORS = {"add": _add, "remove": _remove, "color": _recolor, "material": _rematerial, "size": _resize,
                   "shape": _reshape, "move": _move}


def object_edit(scene: Scene3D, kind: str, pose: CameraPose, rng: random.Random, held_out: bool = False
                ) -> ObjectEdit | None:
    """An edit of the given kind (relations as seen from `pose`), or None when none was found.

    `held_out=False` keeps held-out combinations out of the target.
    """
    if kind not in _OBJECT_EDITORS:
        raise ValueError(f"unknown object edit {kind!r}; choose from {OBJECT_EDITS}")
    for _ in range(4):
        edit = _OBJECT_EDITORS[kind](scene, pose, rng, held_out)
        if edit is not None:
            return edit
    return None


# ------------------------------------------------------------------------------------------ camera edits
@dataclass(frozen=True)
class CameraEdit:
    """One camera edit of a reference pose."""

    kind: str  # one of CAMERA_EDITS
    change: str  # "left 90", "right 45", "around 180", "higher", "lower", "in", "out"
    target: CameraPose  # the pose after the edit, never the reference pose

    @property
    def family(self) -> str:
        if self.kind == "orbit":
            return "orbit_180" if self.change == "around 180" else "orbit"
        return {"higher": "higher", "lower": "lower", "in": "zoom_in", "out": "zoom_out"}[self.change]

    @property
    def fields(self) -> dict[str, str]:
        if self.family != "orbit":
            return {}
        direction, degrees = self.change.split()
        return {"direction": direction, "degrees": degrees, "part": _ORBIT_PART[int(degrees)]}

    def phrase(self, rng: random.Random, held_out: bool) -> Phrase:
        return phrase(self.family, self.fields, rng, held_out)


def _step(names: list[str], current: str, step: int) -> str | None:
    index = names.index(current) + step
    return names[index] if 0 <= index < len(names) else None


def camera_edits(pose: CameraPose) -> list[CameraEdit]:
    """Every camera edit of `pose`, in a fixed order."""
    edits = []
    for degrees in ORBIT_DEGREES:
        if degrees == 180:
            edits.append(CameraEdit("orbit", "around 180", pose.orbit(180)))
            continue
        # Walking to the camera's left turns the orbit the way of decreasing azimuth (see camera.frame).
        edits.append(CameraEdit("orbit", f"left {degrees}", pose.orbit(-degrees)))
        edits.append(CameraEdit("orbit", f"right {degrees}", pose.orbit(degrees)))
    elevations, distances = list(ELEVATIONS), list(DISTANCES)
    for change, step in (("higher", 1), ("lower", -1)):
        elevation = _step(elevations, pose.elevation, step)
        if elevation:
            edits.append(CameraEdit("height", change, replace(pose, elevation=elevation)))
    for change, step in (("in", -1), ("out", 1)):
        distance = _step(distances, pose.distance, step)
        if distance:
            edits.append(CameraEdit("zoom", change, replace(pose, distance=distance)))
    return edits


_OPPOSITE = {"higher": "lower", "lower": "higher", "in": "out", "out": "in"}


def opposite_change(change: str) -> str | None:
    """The change a reader who confused the direction would make ("left 90" -> "right 90"); None for 180."""
    if change in _OPPOSITE:
        return _OPPOSITE[change]
    direction, degrees = change.split()
    return {"left": f"right {degrees}", "right": f"left {degrees}"}.get(direction)


def camera_edit(pose: CameraPose, kind: str, rng: random.Random) -> CameraEdit:
    """A random edit of the given kind among those `pose` allows (orbits by 45, 90 and 180 equally often)."""
    if kind not in CAMERA_EDITS:
        raise ValueError(f"unknown camera edit {kind!r}; choose from {CAMERA_EDITS}")
    choices = [edit for edit in camera_edits(pose) if edit.kind == kind]
    if kind == "orbit":
        degrees = rng.choice(ORBIT_DEGREES)
        choices = [edit for edit in choices if edit.change.endswith(str(degrees))]
    return rng.choice(choices)


def combined_phrase(object_part: Phrase, camera_part: Phrase, rng: random.Random, held_out: bool) -> Phrase:
    """One caption for an object edit together with a camera edit."""
    joined = phrase("combined", {"object": object_part.text, "camera": camera_part.text}, rng, held_out)
    return Phrase(joined.text, joined.held_out or object_part.held_out or camera_part.held_out)
