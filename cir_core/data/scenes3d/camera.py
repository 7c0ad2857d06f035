"""The camera of the scenes3d benchmark: an orbit around the table centre, and what it sees.

A pose is an azimuth (whole degrees around the table), one of three heights and one of
three distances; the camera always looks at the table centre. The table is round and
has no front, so poses are only ever told apart relative to each other ("walk 90 degrees
to the left") or through the relations they show between objects.

Relations are as seen from the camera, along two directions on the table: the camera's
right (left of / right of) and the direction towards the camera (in front of / behind).
The larger of the two components decides which relation holds, so each pair of objects
is in exactly one relation from a given pose.

World axes: x and y span the table, z points up; the table top is the plane z = 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

FIELD_OF_VIEW = 40.0  # degrees, across the (square) image
LOOK_AT_HEIGHT = 0.35  # the camera aims a little above the table top, at the middle of a small object
ELEVATIONS: dict[str, float] = {"low": 18.0, "middle": 35.0, "high": 58.0}  # degrees above the table plane
DISTANCES: dict[str, float] = {"close": 9.0, "medium": 11.5, "far": 14.0}  # from the aim point, table units
RELATIONS = ("left of", "right of", "in front of", "behind")


@dataclass(frozen=True)
class CameraPose:
    """Where the camera stands on its orbit; the id names the pose the same way in every scene."""

    azimuth: int  # degrees around the table, 0..359 (0 = along +x from the centre, counter-clockwise from above)
    elevation: str  # one of ELEVATIONS
    distance: str  # one of DISTANCES

    def __post_init__(self) -> None:
        if self.elevation not in ELEVATIONS:
            raise ValueError(f"unknown camera elevation {self.elevation!r}; choose from {tuple(ELEVATIONS)}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown camera distance {self.distance!r}; choose from {tuple(DISTANCES)}")
        object.__setattr__(self, "azimuth", int(self.azimuth) % 360)

    @property
    def id(self) -> str:
        """"az135-high-far"."""
        return f"az{self.azimuth:03d}-{self.elevation}-{self.distance}"

    def orbit(self, degrees: int) -> CameraPose:
        """The camera walked `degrees` around the table; positive is towards the camera's right."""
        return replace(self, azimuth=self.azimuth + degrees)

    def to_dict(self) -> dict[str, Any]:
        return {"azimuth": self.azimuth, "elevation": self.elevation, "distance": self.distance}

    @classmethod
    def from_id(cls, camera_id: str) -> CameraPose:
        try:
            azimuth, elevation, distance = camera_id.split("-")
            if not azimuth.startswith("az"):
                raise ValueError
            return cls(int(azimuth[2:]), elevation, distance)
        except ValueError:
            raise ValueError(f"not a scenes3d camera id: {camera_id!r} (expected e.g. 'az135-high-far')") from None


@dataclass(frozen=True)
class CameraFrame:
    """The pose in world coordinates: position and the three unit axes of the view."""

    origin: np.ndarray  # (3,) camera position
    target: np.ndarray  # (3,) the point looked at
    forward: np.ndarray  # (3,) unit, from the camera to the target
    right: np.ndarray  # (3,) unit, horizontal, the image's +x direction
    up: np.ndarray  # (3,) unit, the image's up direction


def frame(pose: CameraPose) -> CameraFrame:
    azimuth, elevation = math.radians(pose.azimuth), math.radians(ELEVATIONS[pose.elevation])
    distance = DISTANCES[pose.distance]
    target = np.array([0.0, 0.0, LOOK_AT_HEIGHT])
    origin = target + distance * np.array([math.cos(elevation) * math.cos(azimuth),
                                           math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    forward = (target - origin) / distance
    # Walking right around the table increases the azimuth, so the right axis is the orbit's tangent.
    right = np.array([-math.sin(azimuth), math.cos(azimuth), 0.0])
    up = np.cross(right, forward)
    return CameraFrame(origin, target, forward, right, up)


def pixel_rays(pose: CameraPose, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(origin (3,), directions (resolution * resolution, 3) unit) through the pixel centres, row by row
    from the top left, for a pinhole camera of `FIELD_OF_VIEW` (the renderer's camera)."""
    view = frame(pose)
    half = math.tan(math.radians(FIELD_OF_VIEW) / 2)
    ticks = ((np.arange(resolution) + 0.5) / resolution * 2 - 1) * half
    across, down = np.meshgrid(ticks, ticks)  # (R, R) each: x grows to the right, y downwards
    directions = (view.forward[None, None, :] + across[..., None] * view.right - down[..., None] * view.up)
    directions = directions.reshape(-1, 3)
    return view.origin, directions / np.linalg.norm(directions, axis=1, keepdims=True)


def project(pose: CameraPose, point: np.ndarray) -> tuple[float, float]:
    """Image coordinates of a world point in [0, 1] (x to the right, y down); outside that range is out of frame."""
    view = frame(pose)
    offset = np.asarray(point, dtype=float) - view.origin
    depth = float(offset @ view.forward)
    half = math.tan(math.radians(FIELD_OF_VIEW) / 2)
    return (float(offset @ view.right) / depth / half + 1) / 2, (1 - float(offset @ view.up) / depth / half) / 2


def table_axes(pose: CameraPose) -> tuple[np.ndarray, np.ndarray]:
    """(right, towards the camera), unit vectors on the table plane: the axes of the relations."""
    azimuth = math.radians(pose.azimuth)
    return np.array([-math.sin(azimuth), math.cos(azimuth)]), np.array([math.cos(azimuth), math.sin(azimuth)])


def relation(pose: CameraPose, a: tuple[float, float], b: tuple[float, float]) -> tuple[str, float]:
    """(how the point `a` on the table stands to `b` as seen from `pose`, its margin in [0, 1]).

    The margin is how much the deciding component exceeds the other, relative to the distance:
    0 on a diagonal (where a small change flips the relation), 1 straight along an axis.
    """
    right, towards = table_axes(pose)
    offset = np.array([a[0] - b[0], a[1] - b[1]])
    across, closer = float(offset @ right), float(offset @ towards)
    length = math.hypot(across, closer) or 1.0
    margin = abs(abs(across) - abs(closer)) / length
    if abs(across) >= abs(closer):
        return ("right of" if across > 0 else "left of"), margin
    return ("in front of" if closer > 0 else "behind"), margin


def spot_in_relation(pose: CameraPose, anchor: tuple[float, float], name: str, distance: float,
                     sideways: float) -> tuple[float, float]:
    """The point `distance` from `anchor` in the direction `name` (one of RELATIONS) as seen from `pose`,
    shifted `sideways` across that direction."""
    right, towards = table_axes(pose)
    along = {"right of": right, "left of": -right, "in front of": towards, "behind": -towards}[name]
    across = np.array([-along[1], along[0]])
    point = np.asarray(anchor) + distance * along + sideways * across
    return float(point[0]), float(point[1])
