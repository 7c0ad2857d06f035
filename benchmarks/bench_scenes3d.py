"""How fast scenes3d renders, and what the renderer's settings buy.

    python benchmarks/bench_scenes3d.py --views 48                 # images/s with 1 and 2 worker processes
    python benchmarks/bench_scenes3d.py --views 0 --compare 4      # samplers and sample counts against a
                                                                   # 512-sample reference, and pyrender if installed

The throughput part renders benchmark-like views (random tables from random poses)
through the same code as `cir data scenes3d` (render, visible fractions, description,
saving in the default image format) and prints images per second and seconds per image for each worker count side by
side. The comparison part times one view at a time on one thread and scores each image
by its PSNR against an independent-sampler render with 512 samples per pixel.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

# llvmpipe (pyrender's software OpenGL) would otherwise use every core; the comparison is per core.
os.environ.setdefault("LP_NUM_THREADS", "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from cir_core.data.scenes3d import camera, render, scene  # noqa: E402
from cir_core.data.scenes3d.plan import View, random_pose  # noqa: E402
from cir_core.data.scenes3d.write import DEFAULT_IMAGE_FORMAT, render_views  # noqa: E402

MITSUBA_SETTINGS = (("independent", 4), ("independent", 8), ("independent", 16), ("independent", 32),
                    ("multijitter", 4), ("multijitter", 8), ("multijitter", 16), ("multijitter", 36))
REFERENCE_SAMPLES = 512


def sample_views(count: int, seed: int) -> list[View]:
    rng = random.Random(f"bench-scenes3d/{seed}")
    return [View(scene.sample_scene(rng), random_pose(rng)) for _ in range(count)]


def throughput(views: list[View], image_size: int, samples: int, worker_counts: list[int]) -> None:
    rows = []
    for workers in worker_counts:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            render_views(views, image_size, samples, Path(folder), workers, progress=False)
            seconds = time.perf_counter() - start
        rows.append((workers, len(views) / seconds, seconds / len(views), seconds * workers / len(views)))
    print(f"\n{len(views)} views, {image_size} px, {samples} samples per pixel ({render.SAMPLER}), "
          f"render + visibility + description + {DEFAULT_IMAGE_FORMAT}")
    print(f"{'workers':>7} {'images/s':>9} {'s/image (wall)':>15} {'s/image per worker':>19}")
    for workers, rate, wall, per_worker in rows:
        print(f"{workers:>7} {rate:>9.2f} {wall:>15.3f} {per_worker:>19.3f}")


def _mitsuba_image(view: View, image_size: int, sampler: str, samples: int, seed: int = 1) -> tuple[np.ndarray, float]:
    mi = render._mitsuba()
    description = render.scene_description(view.scene, view.pose, image_size, samples)
    description["sensor"]["sampler"] = {"type": sampler, "sample_count": samples}
    loaded = mi.load_dict(description)
    start = time.process_time()
    radiance = np.asarray(mi.render(loaded, seed=seed, spp=samples), dtype=np.float32)
    return render.to_srgb8(radiance), time.process_time() - start


def _pyrender_image(view: View, image_size: int) -> tuple[np.ndarray, float]:
    """The same view rasterised by pyrender: PBR materials, one shadow-casting spot light, ambient light."""
    import pyrender
    import trimesh

    stage = pyrender.Scene(ambient_light=[render.ENVIRONMENT_RADIANCE] * 3,
                           bg_color=[render.ENVIRONMENT_RADIANCE] * 3 + [1.0])

    def add(mesh: trimesh.Trimesh, color: list[float], metal: bool, pose: np.ndarray, smooth: bool = True) -> None:
        material = pyrender.MetallicRoughnessMaterial(baseColorFactor=color + [1.0], metallicFactor=float(metal),
                                                      roughnessFactor=0.3 if metal else 1.0)
        stage.add(pyrender.Mesh.from_trimesh(mesh, material=material, smooth=smooth), pose=pose)

    def placed(x: float, y: float, z: float, yaw: float = 0.0) -> np.ndarray:
        pose = trimesh.transformations.rotation_matrix(math.radians(yaw), [0, 0, 1])
        pose[:3, 3] = [x, y, z]
        return pose

    add(trimesh.creation.box([120, 120, 0.01]), [render.FLOOR_GRAY] * 3, False, placed(0, 0, -0.01), smooth=False)
    table = trimesh.creation.cylinder(radius=scene.TABLE_RADIUS, height=0.01, sections=96)
    add(table, [render.TABLE_GRAY] * 3, False, placed(0, 0, -0.004))
    for obj in view.scene.objects:
        r = obj.radius
        if obj.shape == "cube":
            mesh, pose = trimesh.creation.box([2 * r] * 3), placed(obj.x, obj.y, r, obj.yaw)
        elif obj.shape == "sphere":
            mesh, pose = trimesh.creation.icosphere(subdivisions=3, radius=r), placed(obj.x, obj.y, r)
        elif obj.shape == "cylinder":
            mesh, pose = trimesh.creation.cylinder(radius=r, height=2 * r, sections=48), placed(obj.x, obj.y, r)
        else:
            mesh, pose = trimesh.creation.cone(radius=r, height=2 * r, sections=48), placed(obj.x, obj.y, 0)
        add(mesh, render._linear(obj.color), obj.material == "metal", pose, smooth=obj.shape != "cube")
    view_frame = camera.frame(view.pose)
    camera_pose = np.eye(4)
    camera_pose[:3, 0], camera_pose[:3, 1], camera_pose[:3, 2] = view_frame.right, view_frame.up, -view_frame.forward
    camera_pose[:3, 3] = view_frame.origin
    stage.add(pyrender.PerspectiveCamera(yfov=math.radians(camera.FIELD_OF_VIEW)), pose=camera_pose)
    light_position = np.array(render.LIGHT_POSITION)
    aim = -light_position / np.linalg.norm(light_position)
    light_pose = np.eye(4)
    side = np.cross(aim, [0, 0, 1])
    side /= np.linalg.norm(side)
    light_pose[:3, 0], light_pose[:3, 1], light_pose[:3, 2] = side, np.cross(-aim, side), -aim
    light_pose[:3, 3] = light_position
    intensity = render.LIGHT_RADIANCE * math.pi * render.LIGHT_RADIUS ** 2  # the sphere light's radiant intensity
    stage.add(pyrender.SpotLight(color=np.ones(3), intensity=intensity, outerConeAngle=math.radians(60)),
              pose=light_pose)
    renderer = pyrender.OffscreenRenderer(image_size, image_size)
    start = time.process_time()
    color, _ = renderer.render(stage, flags=pyrender.RenderFlags.SHADOWS_SPOT)
    seconds = time.process_time() - start
    renderer.delete()
    return np.asarray(color), seconds


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    error = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * math.log10(255 ** 2 / error)


def compare(views: list[View], image_size: int, figure: Path | None) -> None:
    render.use_threads(1)
    references = [_mitsuba_image(view, image_size, "independent", REFERENCE_SAMPLES, seed=99)[0] for view in views]
    rows, panels = [], {"reference": references}
    for sampler, samples in MITSUBA_SETTINGS:
        images, seconds = zip(*(_mitsuba_image(view, image_size, sampler, samples) for view in views))
        rows.append((f"mitsuba {sampler} {samples} spp", np.mean(seconds),
                     np.mean([psnr(image, ref) for image, ref in zip(images, references)])))
        panels[f"{sampler} {samples}"] = images
    if importlib.util.find_spec("pyrender") is None:
        print("(pyrender is not installed: not compared)")
    else:
        _pyrender_image(views[0], image_size)  # the first context creation costs a second
        images, seconds = zip(*(_pyrender_image(view, image_size) for view in views))
        rows.append(("pyrender (EGL, llvmpipe, 1 thread)", np.mean(seconds),
                     np.mean([psnr(image, ref) for image, ref in zip(images, references)])))
        panels["pyrender"] = images
    print(f"\n{len(views)} views, {image_size} px, one thread; PSNR against {REFERENCE_SAMPLES} independent samples")
    print(f"{'renderer':<38} {'CPU s/image':>11} {'PSNR dB':>8}")
    for name, seconds, quality in rows:
        print(f"{name:<38} {seconds:>11.3f} {quality:>8.2f}")
    if figure is not None:
        from PIL import Image

        chosen = [name for name in ("independent 16", "multijitter 8", "pyrender", "reference") if name in panels]
        sheet = Image.new("RGB", (image_size * len(chosen), image_size * len(views)), "white")
        for column, name in enumerate(chosen):
            for row, image in enumerate(panels[name]):
                sheet.paste(Image.fromarray(image), (column * image_size, row * image_size))
        figure.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(figure)
        print(f"columns of {figure}: {', '.join(chosen)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=48, help="views rendered per worker count (0: skip)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--samples-per-pixel", type=int, default=render.SAMPLES_PER_PIXEL)
    parser.add_argument("--compare", type=int, default=0, metavar="N",
                        help="also compare samplers, sample counts and pyrender on N views")
    parser.add_argument("--figure", type=Path, help="with --compare: save the views side by side here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.views:
        throughput(sample_views(args.views, args.seed), args.image_size, args.samples_per_pixel,
                   [int(count) for count in args.workers.split(",")])
    if args.compare:
        compare(sample_views(args.compare, args.seed + 1), args.image_size, args.figure)


if __name__ == "__main__":
    main()
