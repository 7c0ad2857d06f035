"""Scenes of the synthetic "shapes" benchmark: vocabulary, symbolic labels, sampling, rendering.

A scene is a 3x3 grid holding 1-5 objects, at most one per cell; an object is a
(shape, colour, size) placed at the centre of its cell. The label (`ShapesScene`) is
the whole truth about an image: its id is a hash of the label, so identical scenes
share one id and one image file.

Objects are always drawn upright (a triangle points up), in every view: viewpoint
edits (mirror, rotations) move objects between cells and never turn the objects
themselves. That keeps every scene's image a function of its label alone.

The held-out (shape, colour) combinations are part of the benchmark's definition,
not of a seed: no training scene ever contains them.
"""
from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image, ImageChops, ImageDraw

GRID = 3
SHAPES = ("square", "circle", "triangle")
# Chosen far apart in RGB so that a colour survives antialiasing and small renders.
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "red": (220, 40, 40),
    "blue": (40, 80, 230),
    "green": (40, 170, 60),
    "brown": (140, 90, 40),
    "purple": (140, 60, 190),
    "cyan": (40, 200, 220),
    "yellow": (240, 210, 30),
}
SIZES = ("small", "large")
BACKGROUND = (255, 255, 255)
MAX_OBJECTS = 5
# (shape, colour) pairs never present in a training scene; val/test may contain them.
HELD_OUT_COMBINATIONS: tuple[tuple[str, str], ...] = (("triangle", "red"), ("circle", "cyan"), ("square", "purple"))

ROW_WORDS = ("top", "middle", "bottom")
COLUMN_WORDS = ("left", "center", "right")

DEFAULT_IMAGE_SIZE = 96
MIN_IMAGE_SIZE = 24
# The models here read 224 pixels at most; far larger images only cost memory and time
# (one image of 100,000 pixels a side is 30 GB).
MAX_IMAGE_SIZE = 2048
SUPERSAMPLING = 4  # draw at 4x, then average 4x4 blocks: antialiased edges
# Object extent as a fraction of the cell side: 24 px (large) and 13 px (small) in a 32 px cell.
EXTENT = {"large": 24 / 32, "small": 13 / 32}

# 0 = empty cell; 1 + index over shape x colour x size otherwise.
NUM_CELL_CLASSES = 1 + len(SHAPES) * len(COLORS) * len(SIZES)

Cell = tuple[int, int]


def position_name(row: int, col: int) -> str:
    """The words for a cell: "top left", "middle right", "center", ..."""
    if (row, col) == (1, 1):
        return "center"
    return f"{ROW_WORDS[row]} {COLUMN_WORDS[col]}"


POSITIONS: dict[str, Cell] = {position_name(r, c): (r, c) for r in range(GRID) for c in range(GRID)}


def describe_object(obj: SceneObject) -> str:
    """"large red circle top left": the words a scene description uses for one object."""
    return f"{obj.size} {obj.color} {obj.shape} {position_name(obj.row, obj.col)}"


def describe_scene(scene: ShapesScene) -> str:
    """The scene in words, one object after another: "large yellow square top right; small red ..."."""
    return "; ".join(describe_object(obj) for obj in scene.objects)


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object of a scene; ordering is by cell (row-major), which is unique within a scene."""

    row: int  # 0 = top
    col: int  # 0 = left
    shape: str  # one of SHAPES
    color: str  # one of COLORS
    size: str  # one of SIZES

    @property
    def cell(self) -> Cell:
        return (self.row, self.col)

    @property
    def combination(self) -> tuple[str, str]:
        return (self.shape, self.color)

    @property
    def appearance(self) -> tuple[str, str, str]:
        """Everything but the place: two objects alike in this differ only in where they stand."""
        return (self.shape, self.color, self.size)

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "col": self.col, "shape": self.shape, "color": self.color, "size": self.size}


@dataclass(frozen=True)
class ShapesScene:
    """The symbolic label of a scene: its objects sorted by cell. Equal labels mean equal images."""

    objects: tuple[SceneObject, ...]  # sorted by (row, col), at most one per cell, at least one
    id: str = field(init=False, compare=False, repr=False)  # short stable hash of the canonical label: the image name

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects))
        if not objects:
            raise ValueError("a shapes scene needs at least one object")
        for obj in objects:
            _check_object(obj)
        cells = [obj.cell for obj in objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell in {objects}")
        object.__setattr__(self, "objects", objects)
        canonical = "|".join(f"{o.row},{o.col},{o.shape},{o.color},{o.size}" for o in objects)
        object.__setattr__(self, "id", hashlib.sha1(canonical.encode("ascii")).hexdigest()[:12])

    def at(self, row: int, col: int) -> SceneObject | None:
        return next((obj for obj in self.objects if obj.cell == (row, col)), None)

    def empty_cells(self) -> list[Cell]:
        taken = {obj.cell for obj in self.objects}
        return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]

    def has_held_out_combination(self) -> bool:
        return any(obj.combination in HELD_OUT_COMBINATIONS for obj in self.objects)

    def replace(self, old: SceneObject, new: SceneObject | None) -> ShapesScene:
        """The scene with `old` swapped for `new` (or removed when `new` is None)."""
        kept = [obj for obj in self.objects if obj != old]
        if len(kept) == len(self.objects):
            raise ValueError(f"{old} is not in the scene")
        return ShapesScene(tuple(kept + ([new] if new is not None else [])))

    def map_cells(self, mapping: Callable[[int, int], Cell]) -> ShapesScene:
        """The scene with every object moved to `mapping(row, col)` (objects stay upright)."""
        return ShapesScene(tuple(SceneObject(*mapping(o.row, o.col), *o.appearance) for o in self.objects))

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [obj.to_dict() for obj in self.objects]}

    @classmethod
    def from_dict(cls, data: Any) -> ShapesScene:
        try:
            return cls(tuple(SceneObject(int(o["row"]), int(o["col"]), o["shape"], o["color"], o["size"])
                             for o in data["objects"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a shapes scene label: {data!r} ({type(error).__name__}: {error})") from None


def _check_object(obj: SceneObject) -> None:
    if 0 <= obj.row < GRID and 0 <= obj.col < GRID and obj.shape in SHAPES and obj.color in COLORS \
            and obj.size in SIZES:
        return
    problems = [
        (0 <= obj.row < GRID and 0 <= obj.col < GRID, f"cell ({obj.row}, {obj.col}) outside the {GRID}x{GRID} grid"),
        (obj.shape in SHAPES, f"unknown shape {obj.shape!r}; choose from {SHAPES}"),
        (obj.color in COLORS, f"unknown colour {obj.color!r}; choose from {tuple(COLORS)}"),
        (obj.size in SIZES, f"unknown size {obj.size!r}; choose from {SIZES}"),
    ]
    raise ValueError("invalid scene object: " + "; ".join(message for ok, message in problems if not ok))


# Viewpoint changes as cell mappings (row, col) -> (row, col) on the 3x3 grid.
def mirror_cell(row: int, col: int) -> Cell:
    return (row, GRID - 1 - col)


def rotate_clockwise_cell(row: int, col: int) -> Cell:
    return (col, GRID - 1 - row)


def rotate_counterclockwise_cell(row: int, col: int) -> Cell:
    return (GRID - 1 - col, row)


def rotate_half_turn_cell(row: int, col: int) -> Cell:
    return (GRID - 1 - row, GRID - 1 - col)


def allowed_combinations(train: bool) -> list[tuple[str, str]]:
    """(shape, colour) pairs a scene may hold: all of them, or all but the held-out ones for training."""
    return [(s, c) for s in SHAPES for c in COLORS if not (train and (s, c) in HELD_OUT_COMBINATIONS)]


def sample_scene(rng: random.Random, train: bool = True) -> ShapesScene:
    """A random scene: object count uniform over 1..5 (sparse scenes as often as crowded ones)."""
    count = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], count)
    combinations = allowed_combinations(train)
    objects = []
    for row, col in cells:
        shape, color = rng.choice(combinations)
        objects.append(SceneObject(row, col, shape, color, rng.choice(SIZES)))
    return ShapesScene(tuple(objects))


def cell_class(obj: SceneObject | None) -> int:
    if obj is None:
        return 0
    shape, color, size = SHAPES.index(obj.shape), list(COLORS).index(obj.color), SIZES.index(obj.size)
    return 1 + (shape * len(COLORS) + color) * len(SIZES) + size


def cell_labels(scene: ShapesScene) -> torch.Tensor:
    """(9,) long: the class of each cell in row-major order (0 = empty, see NUM_CELL_CLASSES)."""
    return torch.tensor([cell_class(scene.at(r, c)) for r in range(GRID) for c in range(GRID)], dtype=torch.long)


# Per-cell attributes for dense supervision: (shape or empty, colour, size); -100 = not applicable.
REGION_CLASSES = (1 + len(SHAPES), len(COLORS), len(SIZES))


def region_attributes(scene: ShapesScene) -> torch.Tensor:
    """(9, 3) long: per cell (row-major) its shape (0 = empty), colour and size (-100 when empty)."""
    rows = []
    for r in range(GRID):
        for c in range(GRID):
            obj = scene.at(r, c)
            if obj is None:
                rows.append((0, -100, -100))
            else:
                rows.append((1 + SHAPES.index(obj.shape), list(COLORS).index(obj.color), SIZES.index(obj.size)))
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------------------- rendering
def cell_box(row: int, col: int, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) covering the cell, rounded outwards."""
    left, top = (col * image_size) // GRID, (row * image_size) // GRID
    right, bottom = -((-(col + 1) * image_size) // GRID), -((-(row + 1) * image_size) // GRID)
    return left, top, right, bottom


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, image_size: int, scale: int,
                offset: tuple[float, float] = (0.0, 0.0)) -> None:
    """Draw `obj` centred in its cell on a canvas `scale` times larger than the image.

    `offset` is subtracted from every coordinate (in canvas pixels), for drawing a crop.
    """
    cell = image_size * scale / GRID
    cx = (obj.col + 0.5) * cell - offset[0]
    cy = (obj.row + 0.5) * cell - offset[1]
    half = EXTENT[obj.size] * cell / 2
    color = COLORS[obj.color]
    if obj.shape == "square":
        draw.polygon([(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)],
                     fill=color)
    elif obj.shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=color)
    else:  # triangle, pointing up: apex at the top centre, base along the bottom edge
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=color)


@functools.lru_cache(maxsize=4096)
def _object_tile(obj: SceneObject, image_size: int) -> Image.Image:
    """The antialiased pixels of the object's cell box, on the background.

    Objects keep a margin of at least one pixel from their cell's border at any
    supported size, so tiles of neighbouring cells never both colour one pixel and a
    scene is exactly the composite of its tiles, as if drawn on one big canvas. Caching
    tiles makes rendering a few pastes per scene.
    """
    left, top, right, bottom = cell_box(obj.row, obj.col, image_size)
    canvas = Image.new("RGB", ((right - left) * SUPERSAMPLING, (bottom - top) * SUPERSAMPLING), BACKGROUND)
    draw_object(ImageDraw.Draw(canvas), obj, image_size, SUPERSAMPLING,
                offset=(left * SUPERSAMPLING, top * SUPERSAMPLING))
    return canvas.reduce(SUPERSAMPLING)


def render_scene(scene: ShapesScene, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """RGB image of `size` x `size` pixels: cells of size/3, objects centred, drawn at 4x and downsampled."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {size} is too small to draw a 3x3 grid of objects (minimum {MIN_IMAGE_SIZE})")
    if size > MAX_IMAGE_SIZE:
        raise ValueError(f"image size {size} is too large to draw (maximum {MAX_IMAGE_SIZE})")
    image = Image.new("RGB", (size, size), BACKGROUND)
    for obj in scene.objects:
        left, top, right, bottom = cell_box(obj.row, obj.col, size)
        # The background is white, so multiplying composites a tile exactly over its neighbours' white margins.
        image.paste(ImageChops.multiply(image.crop((left, top, right, bottom)), _object_tile(obj, size)), (left, top))
    return image
