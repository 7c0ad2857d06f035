"""Rendering a view of a scene with Mitsuba 3 (path tracing on the CPU, `scalar_rgb` variant).

Mitsuba is imported on first use, so that sampling scenes and queries, and reading a
benchmark folder, do not need it. Rendering is deterministic: the same label, pose, size
and sample count give the same pixels on any number of threads, because the sampler is
seeded from the image id and Mitsuba seeds each image block from that seed.

The stage: a large grey floor, a round lighter table top (no front, no corners), one
spherical area light above one side (soft shadows, and a highlight on metal) and a dim
constant environment, so shadowed sides are never black and metal reflects something
everywhere.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from PIL import Image

from cir_core.data.scenes3d.camera import FIELD_OF_VIEW, CameraPose, frame
from cir_core.data.scenes3d.scene import COLORS, TABLE_RADIUS, Scene3D, SceneObject3D

MITSUBA_VERSION = "3.9.1"
VARIANT = "scalar_rgb"
# Multi-jittered samples beat independent ones by 3-4 dB at equal cost (docs/scenes3d.md); 8 of them per
# pixel are as clean as 16 independent ones in two thirds of the time.
SAMPLER = "multijitter"
SAMPLES_PER_PIXEL = 8
MAX_DEPTH = 4  # light paths of up to 4 segments: a metal object reflecting a lit matte one is 3
FLOOR_GRAY, TABLE_GRAY = 0.25, 0.55
# Above and beyond every camera pose (the farthest camera is 14 from the aim point, this light 17), so no
# view ever shows it; its size and radiance give the soft shadows and brightness of a nearer, smaller one.
LIGHT_POSITION, LIGHT_RADIUS, LIGHT_RADIANCE = (6.0, -4.0, 16.0), 2.0, 12.0
ENVIRONMENT_RADIANCE = 0.35
# GGX alpha: sharp enough that a metal cube's flat faces mirror their neighbours and the table's rim
# (at 0.18 they looked matte), rough enough that the light's highlight spans more than a pixel at 128 px.
METAL_ROUGHNESS = 0.08
_CONE_SEGMENTS = 48


def _linear(color: str) -> list[float]:
    """sRGB palette entry -> linear reflectance, which is what the renderer multiplies light by."""
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    return [round(channel(v), 6) for v in COLORS[color]]


@functools.lru_cache(maxsize=1)
def _mitsuba():
    try:
        import mitsuba as mi
    except ImportError as error:
        raise ImportError(f"rendering scenes3d needs Mitsuba 3 (pip install mitsuba=={MITSUBA_VERSION})") from error
    mi.set_variant(VARIANT)
    # The sampler's note that it rounded the sample count would come once per image; effective_samples says it once.
    mi.set_log_level(mi.LogLevel.Error)
    return mi


def use_threads(count: int) -> None:
    """Render on `count` threads in this process (worker processes each use one)."""
    import drjit

    _mitsuba()
    drjit.set_thread_count(count)


def effective_samples(samples_per_pixel: int) -> int:
    """The samples per pixel the sampler really takes (it rounds some counts up to fill its grid: 5 -> 6)."""
    mi = _mitsuba()
    return int(mi.load_dict({"type": SAMPLER, "sample_count": samples_per_pixel}).sample_count())


def _bsdf(obj: SceneObject3D) -> dict[str, Any]:
    color = {"type": "rgb", "value": _linear(obj.color)}
    if obj.material == "matte":
        return {"type": "diffuse", "reflectance": color}
    return {"type": "roughconductor", "material": "none", "distribution": "ggx", "alpha": METAL_ROUGHNESS,
            "specular_reflectance": color}


def _cone_mesh(mi, obj: SceneObject3D, bsdf: dict[str, Any], name: str):
    """A smooth-shaded cone: a ring of base vertices and one apex vertex per side (for its own normal)."""
    radius, height = obj.radius, obj.height
    angles = np.arange(_CONE_SEGMENTS) * 2 * math.pi / _CONE_SEGMENTS
    middle = angles + math.pi / _CONE_SEGMENTS
    slope = radius / height  # side normals lean up by this much per unit outwards
    ring = np.stack([obj.x + radius * np.cos(angles), obj.y + radius * np.sin(angles), np.zeros_like(angles)], 1)
    apex = np.tile([obj.x, obj.y, height], (_CONE_SEGMENTS, 1))
    ring_normals = np.stack([np.cos(angles), np.sin(angles), np.full_like(angles, slope)], 1)
    apex_normals = np.stack([np.cos(middle), np.sin(middle), np.full_like(middle, slope)], 1)
    positions = np.concatenate([ring, apex])
    normals = np.concatenate([ring_normals, apex_normals])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    index = np.arange(_CONE_SEGMENTS)
    faces = np.stack([index, (index + 1) % _CONE_SEGMENTS, index + _CONE_SEGMENTS], 1)
    properties = mi.Properties()
    properties["bsdf"] = mi.load_dict(bsdf)
    mesh = mi.Mesh(name, len(positions), len(faces), props=properties, has_vertex_normals=True)
    params = mi.traverse(mesh)
    params["vertex_positions"] = _array(positions)
    params["vertex_normals"] = _array(normals)
    params["faces"] = _indices(faces)
    params.update()
    return mesh


def _array(values: np.ndarray):
    import drjit

    return drjit.scalar.ArrayXf(values.astype(np.float32).ravel())


def _indices(values: np.ndarray):
    import drjit

    return drjit.scalar.ArrayXu(values.astype(np.uint32).ravel())


def _object_parts(mi, obj: SceneObject3D, name: str) -> dict[str, Any]:
    transform = mi.ScalarTransform4f()
    bsdf = _bsdf(obj)
    r = obj.radius
    if obj.shape == "cube":
        return {name: {"type": "cube", "bsdf": bsdf,
                       "to_world": transform.translate([obj.x, obj.y, r]).rotate([0, 0, 1], obj.yaw).scale(r)}}
    if obj.shape == "sphere":
        return {name: {"type": "sphere", "center": [obj.x, obj.y, r], "radius": r, "bsdf": bsdf}}
    if obj.shape == "cylinder":
        return {name: {"type": "cylinder", "p0": [obj.x, obj.y, 0.0], "p1": [obj.x, obj.y, 2 * r], "radius": r,
                       "bsdf": bsdf},
                f"{name}-top": {"type": "disk", "bsdf": bsdf,
                                "to_world": transform.translate([obj.x, obj.y, 2 * r]).scale(r)}}
    if obj.shape == "cone":
        return {name: _cone_mesh(mi, obj, bsdf, name)}
    raise ValueError(f"no renderer for shape {obj.shape!r}")


def scene_description(scene: Scene3D, pose: CameraPose, image_size: int, samples_per_pixel: int = SAMPLES_PER_PIXEL,
                      integrator: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Mitsuba scene dictionary of one view (the objects are named "object-<index in scene.objects>")."""
    mi = _mitsuba()
    view = frame(pose)
    transform = mi.ScalarTransform4f()
    description: dict[str, Any] = {
        "type": "scene",
        "integrator": integrator or {"type": "path", "max_depth": MAX_DEPTH},
        "sensor": {
            "type": "perspective", "fov": FIELD_OF_VIEW, "fov_axis": "x",
            "to_world": transform.look_at(origin=view.origin.tolist(), target=view.target.tolist(),
                                          up=view.up.tolist()),
            "film": {"type": "hdrfilm", "width": image_size, "height": image_size, "pixel_format": "rgb",
                     "rfilter": {"type": "gaussian"}},
            "sampler": {"type": SAMPLER, "sample_count": samples_per_pixel},
        },
        "floor": {"type": "rectangle", "to_world": transform.translate([0, 0, -0.002]).scale(60),
                  "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": [FLOOR_GRAY] * 3}}},
        "table": {"type": "disk", "to_world": transform.scale([TABLE_RADIUS, TABLE_RADIUS, 1]),
                  "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": [TABLE_GRAY] * 3}}},
        "light": {"type": "sphere", "center": list(LIGHT_POSITION), "radius": LIGHT_RADIUS,
                  "emitter": {"type": "area", "radiance": {"type": "rgb", "value": [LIGHT_RADIANCE] * 3}}},
        "environment": {"type": "constant", "radiance": {"type": "rgb", "value": [ENVIRONMENT_RADIANCE] * 3}},
    }
    for index, obj in enumerate(scene.objects):
        description.update(_object_parts(mi, obj, f"object-{index}"))
    return description


def render_view(scene: Scene3D, pose: CameraPose, image_size: int, samples_per_pixel: int = SAMPLES_PER_PIXEL,
                seed: int = 0) -> Image.Image:
    """The RGB image of `scene` seen from `pose`, `image_size` pixels a side."""
    mi = _mitsuba()
    loaded = mi.load_dict(scene_description(scene, pose, image_size, samples_per_pixel))
    radiance = np.asarray(mi.render(loaded, seed=seed, spp=samples_per_pixel), dtype=np.float32)  # (S, S, 3) linear
    return Image.fromarray(to_srgb8(radiance), "RGB")


def to_srgb8(radiance: np.ndarray) -> np.ndarray:
    """Linear radiance (H, W, 3) -> 8-bit sRGB, clipping highlights."""
    c = np.clip(radiance, 0.0, 1.0)
    srgb = np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return np.round(srgb * 255).astype(np.uint8)
