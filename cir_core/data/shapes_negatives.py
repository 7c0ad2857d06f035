"""Look-alike scenes for hard-negative training.

Position look-alikes (same objects, another layout) and edit look-alikes (the reference
edited the same way with another outcome) are made and rendered on demand.
"""
from __future__ import annotations

import itertools
import math
import random

from PIL import Image

from cir_core.data.shapes_scene import SceneObject, ShapesScene, render_scene
from cir_core.data.triplets import Triplet

LAYOUT_SPREADS = ("even", "inverse_objects")  # how layout look-alikes are shared among targets


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


def edit_look_alike(reference: ShapesScene, target: ShapesScene, edit_type: str, rng: random.Random,
                    tries: int = 4) -> ShapesScene | None:
    """The reference edited the same way but with another outcome (another object removed, another colour...).

    Such a scene shares the target's edit type and everything the caption does not name,
    so telling it from the target takes reading the caption's details. None when no other
    outcome turns up in `tries` draws (a mirror has only one).
    """
    from cir_core.data.shapes_edits import edit_scene

    for _ in range(tries):
        edit = edit_scene(reference, edit_type, rng, train=True)
        if edit is None:
            return None
        if edit.target.id not in (target.id, reference.id):
            return edit.target
    return None


class LookAlikes:
    """Makes and renders, per training batch, scenes that differ from its targets in one detail."""

    def __init__(self, scenes: dict[str, ShapesScene], image_size: int):
        self.scenes, self.image_size = scenes, image_size

    def _scene(self, image_id: str) -> ShapesScene:
        try:
            return self.scenes[image_id]
        except KeyError:
            raise KeyError(f"no scene label for training image {image_id!r}") from None

    def sample(self, target_ids: list[str], count: int, rng: random.Random, avoid: set[str],
               spread: str = "even") -> list[ShapesScene]:
        """Up to `count` distinct layout look-alikes of the targets, none with an id in `avoid`.

        `spread` (one of LAYOUT_SPREADS) decides who gets them. "even": each pass over the
        (shuffled) targets gives each at most one more, so with `count` = 2 x targets every
        target gets two. "inverse_objects": a target with n objects takes part in every n-th
        pass, so its share is proportional to 1/n. A lone object is the scene with the most
        look-alikes in a gallery: every other cell it could stand in holds one, while a
        scene of five objects has few rivals that keep all five. Chosen ids are added to `avoid`.
        """
        if spread not in LAYOUT_SPREADS:
            raise ValueError(f"unknown look-alike spread {spread!r}; choose one of {', '.join(LAYOUT_SPREADS)}")
        scenes = [self._scene(target_id) for target_id in target_ids]
        every = (lambda scene: len(scene.objects)) if spread == "inverse_objects" else None
        return self._spread(scenes, count, avoid, lambda scene: position_look_alike(scene, rng), rng, every)

    def sample_edits(self, triplets: list[Triplet], count: int, rng: random.Random,
                     avoid: set[str]) -> list[ShapesScene]:
        """Up to `count` distinct `edit_look_alike`s of the triplets, spread like `sample`."""
        cases = [(self._scene(t.reference), self._scene(t.target), t.edit) for t in triplets]
        return self._spread(cases, count, avoid, lambda case: edit_look_alike(*case, rng), rng)

    @staticmethod
    def _spread(sources: list, count: int, avoid: set[str], make, rng: random.Random,
                every=None, tries: int = 4) -> list[ShapesScene]:
        """Look-alikes made in passes over the shuffled sources; a source takes part in the passes
        whose number is a multiple of `every(source)` (None: in all). It stops at `count`, or
        when a pass that every source took part in finds nothing new."""
        if count <= 0:
            return []
        periods = [1 if every is None else max(1, every(source)) for source in sources]
        full_pass = math.lcm(*periods)  # 1 when there are no sources
        chosen: list[ShapesScene] = []
        found_since_full_pass = True
        for pass_number in itertools.count():
            if pass_number % full_pass == 0:
                if not found_since_full_pass:
                    break
                found_since_full_pass = False
            members = [source for source, period in zip(sources, periods) if pass_number % period == 0]
            for source in rng.sample(members, len(members)):
                for _ in range(tries):
                    look_alike = make(source)
                    if look_alike is None or look_alike.id not in avoid:
                        break
                else:
                    look_alike = None  # every draw was already taken
                if look_alike is not None:
                    avoid.add(look_alike.id)
                    chosen.append(look_alike)
                    found_since_full_pass = True
                    if len(chosen) == count:
                        return chosen
        return chosen

    def render(self, scenes: list[ShapesScene]) -> list[Image.Image]:
        return [render_scene(scene, self.image_size) for scene in scenes]
