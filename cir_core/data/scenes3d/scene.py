"""Scenes of the scenes3d benchmark: vocabulary, the symbolic label of a table top, sampling.

A scene is 3 to 6 objects standing on a round table, in the spirit of CLEVR: each object
has a shape, a colour, a material and a size, a place (x, y) on the table and a turn
about the vertical axis. The label (`Scene3D`) is the whole truth about the table,
independent of where the camera is: its id hashes the label, so equal tables share it.

Coordinates are rounded when sampled (centimetres of a table 7.2 units wide, whole
degrees), so the label written to disk is exactly what was rendered and rendering it
again gives the same image.

No two objects of a scene look alike (shape, colour, material and size), so every
object can be named by its looks alone. The held-out (shape, colour) combinations are
part of the benchmark's definition, not of a seed: only test scenes may contain them.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

SHAPES = ("cube", "sphere", "cylinder", "cone")
# CLEVR's palette (sRGB); far apart so a colour survives shading, reflections and 128 pixels.
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
MATERIALS = ("matte", "metal")
SIZES = ("small", "large")
# Half the extent of an object: a sphere's radius, half a cube's side, a cylinder's or cone's base radius.
RADIUS = {"small": 0.38, "large": 0.7}
MIN_OBJECTS, MAX_OBJECTS = 3, 6
TABLE_RADIUS = 3.6  # the rendered table top
PLACEMENT_RADIUS = 2.6  # object centres stay within this distance of the table centre
GAP = 0.2  # the least free space between two objects' footprints
# (shape, colour) pairs that only test scenes may contain.
HELD_OUT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("cube", "purple"), ("sphere", "yellow"), ("cylinder", "cyan"), ("cone", "red"))
_PLACEMENT_TRIES = 200


@dataclass(frozen=True, order=True)
class SceneObject3D:
    """One object on the table; the order (by looks, then place) makes labels canonical."""

    shape: str  # one of SHAPES
    color: str  # one of COLORS
    material: str  # one of MATERIALS
    size: str  # one of SIZES
    x: float  # centre on the table, in table units (the table top has radius TABLE_RADIUS)
    y: float
    yaw: int = 0  # turn about the vertical axis in whole degrees, 0..89 (only a cube shows it)

    @property
    def radius(self) -> float:
        return RADIUS[self.size]

    @property
    def footprint(self) -> float:
        """Radius of the circle on the table that the object covers whatever its turn."""
        return self.radius * (math.sqrt(2) if self.shape == "cube" else 1.0)

    @property
    def height(self) -> float:
        return 2 * self.radius

    @property
    def looks(self) -> tuple[str, str, str, str]:
        """Everything but the place: two objects of a scene never share it."""
        return (self.shape, self.color, self.material, self.size)

    @property
    def combination(self) -> tuple[str, str]:
        return (self.shape, self.color)

    def words(self) -> str:
        """"large red metal cube": the full name of the object."""
        return f"{self.size} {self.color} {self.material} {self.shape}"

    def moved(self, x: float, y: float) -> SceneObject3D:
        return replace(self, x=round(x, 2), y=round(y, 2))

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "material": self.material, "size": self.size,
                "x": self.x, "y": self.y, "yaw": self.yaw}

    @classmethod
    def from_dict(cls, data: Any) -> SceneObject3D:
        return cls(data["shape"], data["color"], data["material"], data["size"], float(data["x"]), float(data["y"]),
                   int(data["yaw"]))


@dataclass(frozen=True)
class Scene3D:
    """The symbolic label of a table: its objects in canonical order. Equal labels mean equal tables."""

    objects: tuple[SceneObject3D, ...]  # sorted; MIN_OBJECTS..MAX_OBJECTS of them, none alike, none overlapping
    id: str = field(init=False, compare=False, repr=False)  # short stable hash of the canonical label

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects))
        if not MIN_OBJECTS <= len(objects) <= MAX_OBJECTS:
            raise ValueError(f"a scenes3d scene holds {MIN_OBJECTS} to {MAX_OBJECTS} objects, not {len(objects)}")
        for obj in objects:
            _check_object(obj)
        looks = [obj.looks for obj in objects]
        if len(set(looks)) != len(looks):
            raise ValueError(f"two objects look alike in {objects}")
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                if overlap(a, b):
                    raise ValueError(f"{a.words()} and {b.words()} overlap")
        object.__setattr__(self, "objects", objects)
        canonical = "|".join(f"{o.shape},{o.color},{o.material},{o.size},{o.x:.2f},{o.y:.2f},{o.yaw}" for o in objects)
        object.__setattr__(self, "id", hashlib.sha1(canonical.encode("ascii")).hexdigest()[:12])

    def has_held_out_combination(self) -> bool:
        return any(obj.combination in HELD_OUT_COMBINATIONS for obj in self.objects)

    def replace(self, old: SceneObject3D, new: SceneObject3D | None) -> Scene3D:
        """The scene with `old` swapped for `new` (or removed when `new` is None)."""
        kept = [obj for obj in self.objects if obj != old]
        if len(kept) == len(self.objects):
            raise ValueError(f"{old} is not in the scene")
        return Scene3D(tuple(kept + ([new] if new is not None else [])))

    def fits(self, candidate: SceneObject3D, ignoring: SceneObject3D | None = None) -> bool:
        """Whether `candidate` can stand on the table here: inside the placement disc, clear of the
        other objects (all but `ignoring`) and unlike any of them."""
        others = [obj for obj in self.objects if obj != ignoring]
        return (math.hypot(candidate.x, candidate.y) <= PLACEMENT_RADIUS
                and not any(overlap(candidate, obj) for obj in others)
                and all(obj.looks != candidate.looks for obj in others))

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [obj.to_dict() for obj in self.objects]}

    @classmethod
    def from_dict(cls, data: Any) -> Scene3D:
        try:
            return cls(tuple(SceneObject3D.from_dict(o) for o in data["objects"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a scenes3d scene label: {data!r:.200} ({type(error).__name__}: {error})") from None


def overlap(a: SceneObject3D, b: SceneObject3D) -> bool:
    return math.hypot(a.x - b.x, a.y - b.y) < a.footprint + b.footprint + GAP


def _check_object(obj: SceneObject3D) -> None:
    problems = [
        (obj.shape in SHAPES, f"unknown shape {obj.shape!r}; choose from {SHAPES}"),
        (obj.color in COLORS, f"unknown colour {obj.color!r}; choose from {tuple(COLORS)}"),
        (obj.material in MATERIALS, f"unknown material {obj.material!r}; choose from {MATERIALS}"),
        (obj.size in SIZES, f"unknown size {obj.size!r}; choose from {SIZES}"),
        (math.hypot(obj.x, obj.y) <= PLACEMENT_RADIUS + 1e-9,
         f"centre ({obj.x}, {obj.y}) farther than {PLACEMENT_RADIUS} from the table centre"),
        (0 <= obj.yaw < 90, f"turn {obj.yaw} outside 0..89 degrees"),
    ]
    failed = [message for ok, message in problems if not ok]
    if failed:
        raise ValueError("invalid scene object: " + "; ".join(failed))


def allowed_looks(held_out: bool) -> list[tuple[str, str, str, str]]:
    """(shape, colour, material, size) an object may have: all, or none of a held-out combination."""
    return [(s, c, m, z) for s in SHAPES for c in COLORS for m in MATERIALS for z in SIZES
            if held_out or (s, c) not in HELD_OUT_COMBINATIONS]


def random_spot(rng: random.Random) -> tuple[float, float]:
    """A point spread evenly over the placement disc (kept inside it after rounding to centimetres)."""
    radius = (PLACEMENT_RADIUS - 0.01) * math.sqrt(rng.random())
    angle = rng.uniform(0, 2 * math.pi)
    return round(radius * math.cos(angle), 2), round(radius * math.sin(angle), 2)


def place_new_object(scene_objects: tuple[SceneObject3D, ...], rng: random.Random, held_out: bool
                     ) -> SceneObject3D | None:
    """An object of random looks, unlike the others, at a random free spot; None when no spot is found."""
    taken = {obj.looks for obj in scene_objects}
    looks = rng.choice([candidate for candidate in allowed_looks(held_out) if candidate not in taken])
    for _ in range(_PLACEMENT_TRIES):
        x, y = random_spot(rng)
        candidate = SceneObject3D(*looks, x=x, y=y, yaw=rng.randrange(90))
        if not any(overlap(candidate, obj) for obj in scene_objects):
            return candidate
    return None


def sample_scene(rng: random.Random, held_out: bool = False, count: int | None = None) -> Scene3D:
    """A random table: object count uniform over 3..6 unless given; `held_out` allows held-out combinations."""
    count = rng.randint(MIN_OBJECTS, MAX_OBJECTS) if count is None else count
    while True:
        objects: tuple[SceneObject3D, ...] = ()
        for _ in range(count):
            new = place_new_object(objects, rng, held_out)
            if new is None:
                break
            objects += (new,)
        if len(objects) == count:
            return Scene3D(objects)
