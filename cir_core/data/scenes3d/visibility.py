"""How much of each object a camera sees: ray casting against the exact solids of a scene.

The renderer is not needed for this: the solids are simple (box, sphere, capped cylinder,
cone), so rays through a grid of pixel centres are intersected in closed form with numpy.
An object's visible fraction is the share of the rays that hit it for which it is the
nearest hit: 1 when nothing stands in front of it, 0 when it is hidden entirely. Parts
outside the frame count neither way, so a zoomed-in view does not look like occlusion.
"""
from __future__ import annotations

import math

import numpy as np

from cir_core.data.scenes3d.camera import CameraPose, pixel_rays
from cir_core.data.scenes3d.scene import Scene3D, SceneObject3D

# Rays per image side: enough to see a small object from far away (some 90 rays) at any image size.
VISIBILITY_RESOLUTION = 96
_EPSILON = 1e-9


def _solve_quadratic(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both roots of a t^2 + b t + c = 0 per ray (nan where there are none), nearer first."""
    discriminant = b * b - 4 * a * c
    root = np.sqrt(np.where(discriminant >= 0, discriminant, np.nan))
    safe_a = np.where(np.abs(a) > _EPSILON, a, np.nan)
    first, second = (-b - root) / (2 * safe_a), (-b + root) / (2 * safe_a)
    return np.fmin(first, second), np.fmax(first, second)


def _nearest(*candidates: np.ndarray) -> np.ndarray:
    """The least positive distance per ray among the candidates (inf when there is none)."""
    stacked = np.stack(candidates)
    stacked = np.where(np.isfinite(stacked) & (stacked > _EPSILON), stacked, np.inf)
    return stacked.min(axis=0)


def _local(obj: SceneObject3D, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays in the object's frame: its base centre at the origin, its turn undone."""
    turn = math.radians(obj.yaw)
    cos, sin = math.cos(turn), math.sin(turn)
    undo = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    local_origin = undo @ (origin - np.array([obj.x, obj.y, 0.0]))
    return np.broadcast_to(local_origin, directions.shape), directions @ undo.T


def _hit_box(o: np.ndarray, d: np.ndarray, half: float) -> np.ndarray:
    low, high = np.array([-half, -half, 0.0]), np.array([half, half, 2 * half])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (low - o) / d, (high - o) / d
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (near <= far) & (far > _EPSILON)
    return np.where(hit, np.where(near > _EPSILON, near, far), np.inf)


def _hit_sphere(o: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    centred = o - np.array([0.0, 0.0, radius])
    near, far = _solve_quadratic((d * d).sum(1), 2 * (centred * d).sum(1), (centred * centred).sum(1) - radius ** 2)
    return _nearest(near, far)


def _in_height(o: np.ndarray, d: np.ndarray, t: np.ndarray, height: float) -> np.ndarray:
    z = o[:, 2] + t * d[:, 2]
    return np.where((z >= 0) & (z <= height), t, np.nan)


def _hit_cap(o: np.ndarray, d: np.ndarray, height: float, radius: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (height - o[:, 2]) / d[:, 2]
    x, y = o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1]
    return np.where(x * x + y * y <= radius ** 2, t, np.nan)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    height = 2 * radius
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius ** 2
    near, far = _solve_quadratic(a, b, c)
    return _nearest(_in_height(o, d, near, height), _in_height(o, d, far, height), _hit_cap(o, d, height, radius))


def _hit_cone(o: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    height = 2 * radius
    k = (radius / height) ** 2
    # x^2 + y^2 = k (height - z)^2 for 0 <= z <= height
    apex_z = height - o[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - k * d[:, 2] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] + k * apex_z * d[:, 2])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - k * apex_z ** 2
    near, far = _solve_quadratic(a, b, c)
    return _nearest(_in_height(o, d, near, height), _in_height(o, d, far, height), _hit_cap(o, d, 0.0, radius))


def hit_distances(obj: SceneObject3D, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(N,) distance along each unit ray to the object's surface, inf where the ray misses it."""
    o, d = _local(obj, origin, directions)
    if obj.shape == "cube":
        return _hit_box(o, d, obj.radius)
    if obj.shape == "sphere":
        return _hit_sphere(o, d, obj.radius)
    if obj.shape == "cylinder":
        return _hit_cylinder(o, d, obj.radius)
    if obj.shape == "cone":
        return _hit_cone(o, d, obj.radius)
    raise ValueError(f"no ray test for shape {obj.shape!r}")


def object_masks(scene: Scene3D, pose: CameraPose, resolution: int = VISIBILITY_RESOLUTION
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(hit, nearest): (objects, R, R) bool, whether each object lies under each pixel centre, and
    (R, R) int, the index in `scene.objects` of the object seen there (-1 for the table)."""
    origin, directions = pixel_rays(pose, resolution)
    distances = np.stack([hit_distances(obj, origin, directions) for obj in scene.objects])  # (objects, R * R)
    hit = np.isfinite(distances)
    nearest = np.where(hit.any(axis=0), distances.argmin(axis=0), -1)
    return hit.reshape(-1, resolution, resolution), nearest.reshape(resolution, resolution)


def visible_fractions(scene: Scene3D, pose: CameraPose, resolution: int = VISIBILITY_RESOLUTION) -> list[float]:
    """Per object of `scene.objects`, the share of its in-frame pixels where nothing is in front of it
    (0.0 for an object that is entirely out of frame)."""
    hit, nearest = object_masks(scene, pose, resolution)
    fractions = []
    for index in range(len(scene.objects)):
        covered = int(hit[index].sum())
        fractions.append(float((nearest == index).sum()) / covered if covered else 0.0)
    return fractions

