"""Writing a scenes3d benchmark folder: plan the splits, render every view once, write the labels.

The folder is built beside its destination and renamed into place when complete
(cir_core.atomic), so an interrupted build never leaves a half-written benchmark.
Rendering runs in `workers` processes of one thread each; every image depends only on
its label, so the files are the same for any number of workers.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import cir_core.data.scenes3d.camera as camera
import cir_core.data.scenes3d.edits as edits
import cir_core.data.scenes3d.plan as plan
import cir_core.data.scenes3d.render as render
import cir_core.data.scenes3d.scene as scene
from cir_core.data.folders import IMAGES_DIR, INFO_FILE, WriteSummary, check_destination, write_json
from cir_core.atomic import staged_folder
from cir_core.data.scenes3d.describe import DESCRIBED_FROM, describe_view
from cir_core.data.scenes3d.read import IMAGE_SUFFIXES
from cir_core.data.scenes3d.plan import Scenes3DCounts, Scenes3DQuery, Scenes3DSplitPlan, View
from cir_core.data.scenes3d.visibility import VISIBILITY_RESOLUTION, visible_fractions

logger = logging.getLogger(__name__)

BENCHMARK = "scenes3d"
VERSION = 1
SCENES_FILE = "scenes.json"
DEFAULT_IMAGE_SIZE = 128
MIN_IMAGE_SIZE = 32  # below this a small object far away is a few pixels
MAX_IMAGE_SIZE = 1024  # the models read 224 pixels at most; larger only costs render time
MAX_SAMPLES_PER_PIXEL = 4096
# How images are stored: file suffix -> Pillow save options. Lossy WebP at quality 90 keeps a
# 128-pixel view at about 1.7 KB against 17 KB as PNG, small enough to ship a test gallery
# with the app; its error is below the path tracer's own noise at 8 samples per pixel.
IMAGE_FORMATS = {"png": {"format": "PNG"}, "webp": {"format": "WEBP", "quality": 90, "method": 6}}
assert set(IMAGE_FORMATS) == set(IMAGE_SUFFIXES), "the reader must read every format the writer writes"
DEFAULT_IMAGE_FORMAT = "webp"
_CHUNK = 8  # views per task: small enough for a smooth progress bar, large enough to hide the hand-over




# ---------------------------------------------------------------------------------------------- labels
def view_label(view: View, visible: list[float], description: str) -> dict[str, Any]:
    """What scenes.json says about one image."""
    return {"scene": view.scene.id, "camera": view.pose.id, "view": view.pose.to_dict(),
            "objects": [obj.to_dict() for obj in view.scene.objects],
            "visible": [round(fraction, 3) for fraction in visible], "description": description}


def _object_dict(obj: scene.SceneObject3D | None) -> dict[str, Any] | None:
    return None if obj is None else obj.to_dict()


def triplet_entry(pairid: int, query: Scenes3DQuery) -> dict[str, Any]:
    """One entry of <split>.json."""
    change, move = query.object_edit, query.camera_edit
    return {
        "pairid": pairid, "reference": query.reference.id, "target": query.target.id, "caption": query.caption,
        "edit": query.edit, "novel": query.novel, "groups": list(query.groups),
        "reference_scene": query.reference.scene.id, "reference_camera": query.reference.pose.id,
        "target_scene": query.target.scene.id, "target_camera": query.target.pose.id,
        "object_edit": None if change is None else {"type": change.kind, "before": _object_dict(change.before),
                                                    "after": _object_dict(change.after),
                                                    "anchor": _object_dict(change.anchor)},
        "camera_edit": None if move is None else {"type": move.kind, "change": move.change},
        "visible_fraction": query.visible_fraction,
        "hard_negatives": {"views": [view.id for view in query.view_negatives],
                           "edits": [view.id for view in query.edit_negatives]},
    }


def _renderer_version() -> str | None:
    try:
        return importlib.metadata.version("mitsuba")
    except importlib.metadata.PackageNotFoundError:
        return None


def _info(seed: int, image_size: int, samples_per_pixel: int, counts: Scenes3DCounts,
          plans: dict[str, Scenes3DSplitPlan], images: int, image_format: str) -> dict[str, Any]:
    return {
        "benchmark": BENCHMARK,
        "version": VERSION,
        "seed": seed,
        "image_size": image_size,
        "image_format": image_format,
        "renderer": {"name": "mitsuba", "version": _renderer_version(), "variant": render.VARIANT,
                     "integrator": "path", "max_depth": render.MAX_DEPTH, "samples_per_pixel": samples_per_pixel},
        "splits": {
            name: {"triplets": len(split.queries), "references": len({q.reference.id for q in split.queries}),
                   "gallery": len(split.gallery), "novel": sum(q.novel for q in split.queries)}
            for name, split in plans.items()
        },
        "images": images,
        "sampling": {key: value for key, value in asdict(counts).items() if key not in plan.SPLITS},
        "held_out": {
            "combinations": [{"shape": shape, "color": color} for shape, color in scene.HELD_OUT_COMBINATIONS],
            "phrasings": dict(edits.HELD_OUT_PHRASINGS),
            "splits": ["test"],
        },
        "edit_types": {"object": list(edits.OBJECT_EDITS), "camera": list(edits.CAMERA_EDITS)},
        "groups": list(plan.GROUP_ORDER),
        "vocabulary": {"shapes": list(scene.SHAPES), "colors": {name: list(rgb) for name, rgb in scene.COLORS.items()},
                       "materials": list(scene.MATERIALS), "sizes": list(scene.SIZES),
                       "relations": list(camera.RELATIONS)},
        "camera": {"field_of_view": camera.FIELD_OF_VIEW, "look_at_height": camera.LOOK_AT_HEIGHT,
                   "elevations": camera.ELEVATIONS, "distances": camera.DISTANCES,
                   "orbit_degrees": list(edits.ORBIT_DEGREES)},
        "visibility": {"rays_per_side": VISIBILITY_RESOLUTION, "edited_object_at_least": plan.MIN_VISIBLE,
                       "occluded_below": plan.OCCLUDED_BELOW, "described_from": DESCRIBED_FROM},
        "notes": ("relations are as seen from the camera; a caption's relations are as seen from the reference; "
                  "the visible fraction of a removal is measured in the reference"),
    }


# ---------------------------------------------------------------------------------------------- rendering
def _render_chunk(job: tuple[list[View], int, int, str, str]) -> list[tuple[str, dict[str, Any]]]:
    views, image_size, samples_per_pixel, images_dir, image_format = job
    labels = []
    for view in views:
        image = render.render_view(view.scene, view.pose, image_size, samples_per_pixel, seed=int(view.id[:8], 16))
        image.save(Path(images_dir) / f"{view.id}.{image_format}", **IMAGE_FORMATS[image_format])
        visible = visible_fractions(view.scene, view.pose)
        labels.append((view.id, view_label(view, visible, describe_view(view.scene, view.pose, visible))))
    return labels


def _one_thread_per_worker() -> None:
    render.use_threads(1)


def render_views(views: list[View], image_size: int, samples_per_pixel: int, images_dir: Path, workers: int,
                 progress: bool, image_format: str = DEFAULT_IMAGE_FORMAT) -> dict[str, dict[str, Any]]:
    """Render and save every view as images_dir/<id>.<image_format>; returns image id -> label (for scenes.json)."""
    jobs = [(views[i:i + _CHUNK], image_size, samples_per_pixel, str(images_dir), image_format)
            for i in range(0, len(views), _CHUNK)]
    labels: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(views), desc="rendering scenes3d", unit="img", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.Pool(min(workers, len(jobs)), initializer=_one_thread_per_worker) as pool:
                for done in pool.imap_unordered(_render_chunk, jobs):
                    labels.update(done)
                    bar.update(len(done))
        else:
            _one_thread_per_worker()
            for job in jobs:
                done = _render_chunk(job)
                labels.update(done)
                bar.update(len(done))
    return labels


# ---------------------------------------------------------------------------------------------- the folder
def check_settings(image_size: int, samples_per_pixel: int, workers: int,
                   image_format: str = DEFAULT_IMAGE_FORMAT) -> None:
    """ValueError naming the first setting the writer cannot use."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    for name, value in (("image size", image_size), ("samples per pixel", samples_per_pixel), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too small (minimum {MIN_IMAGE_SIZE})")
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too large (maximum {MAX_IMAGE_SIZE})")
    if not 1 <= samples_per_pixel <= MAX_SAMPLES_PER_PIXEL:
        raise ValueError(f"samples per pixel must be within 1..{MAX_SAMPLES_PER_PIXEL}, got {samples_per_pixel}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def write_scenes3d_dataset(out_dir: str | Path, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                           counts: Scenes3DCounts | None = None, progress: bool = True, workers: int = 2,
                           overwrite: bool = False, samples_per_pixel: int = render.SAMPLES_PER_PIXEL,
                           image_format: str = DEFAULT_IMAGE_FORMAT) -> WriteSummary:
    """Sample, render and write the benchmark to `out_dir`, atomically.

    Splits without queries are left out of the folder. `overwrite` replaces an existing
    scenes3d dataset (and nothing else).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    counts = counts or Scenes3DCounts()
    counts.validate()
    check_settings(image_size, samples_per_pixel, workers, image_format)
    check_destination(out_dir, overwrite, BENCHMARK)
    if importlib.util.find_spec("mitsuba") is None:
        raise ImportError(f"rendering scenes3d needs Mitsuba 3 (pip install mitsuba=={render.MITSUBA_VERSION})")
    plans = plan.plan_splits(seed, counts, progress=progress)
    views: dict[str, View] = {}
    for split in plans.values():
        for view in split.gallery:
            views.setdefault(view.id, view)
    with staged_folder(out_dir) as staging:
        staging.chmod(0o755)  # mkdtemp makes owner-only folders; a dataset is meant to be shared
        (staging / IMAGES_DIR).mkdir()
        render_start = time.perf_counter()
        labels = render_views([views[i] for i in sorted(views)], image_size, samples_per_pixel,
                              staging / IMAGES_DIR, workers, progress, image_format)
        render_seconds = time.perf_counter() - render_start
        # Asked only now: the worker processes are forked from this one, before it loads Mitsuba.
        used_samples = render.effective_samples(samples_per_pixel)
        if used_samples != samples_per_pixel:
            logger.warning("the %s sampler takes %d samples per pixel, not %d", render.SAMPLER, used_samples,
                           samples_per_pixel)
        write_json(staging / SCENES_FILE, {image_id: labels[image_id] for image_id in sorted(labels)})
        for name, split in plans.items():
            write_json(staging / f"{name}.json", [triplet_entry(pairid, q) for pairid, q in enumerate(split.queries)])
            write_json(staging / f"gallery_{name}.json", [view.id for view in split.gallery])
        info = _info(seed, image_size, used_samples, counts, plans, len(views), image_format)
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2))
    summary = WriteSummary(
        path=out_dir, images=len(views), render_seconds=render_seconds, total_seconds=time.perf_counter() - start,
        triplets={name: len(split.queries) for name, split in plans.items()},
        gallery={name: len(split.gallery) for name, split in plans.items()},
    )
    logger.info("wrote %s: %d images in %.1f s (%.2f images/s)", out_dir, summary.images, render_seconds,
                summary.images_per_second)
    return summary
