"""Encoding a gallery into an index folder: item lists, resumable batched encoding, the build report.

The build encodes images in batches with the model's own preprocessing and
`model.encode_target`, and persists every finished batch in a work folder beside the
destination (`.<name>.work/`). A rerun of an interrupted build with the same model and
items continues after the last finished batch, re-encoding any batch whose files changed
on disk since (size or modification time). When every batch is encoded, the index is
written atomically (`index_store.write_index`) and the work folder removed. One build at
a time writes a destination: it holds a lock (`.<name>.lock`) from start to finish.

Files that cannot be read as images, or are too large or too narrow to be pictures the
model reads, are skipped, logged and listed in the build report (stored in info.json); a
gallery with no readable image is an error.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cir_core.index_store import (
    IndexContents,
    IndexParams,
    check_destination,
    check_finite,
    checked_params,
    write_index,
)
from cir_core.transforms import ImageTransform, check_image_size, to_rgb

logger = logging.getLogger(__name__)

WORK_VERSION = 2  # batches record their files' size and modification time
_MANIFEST = "manifest.json"
# Errors PIL raises for files that are not (complete, sane) images; ImageSizeError is a ValueError.
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SKIPS_LOGGED = 20
_VISION_SUFFIX = ".vision.npy"


@dataclass
class GalleryItem:
    """One image to index."""

    id: str  # unique gallery id
    path: str | Path  # image file
    caption: str | None = None  # free-text caption shown with the image
    label: str | None = None  # free text or JSON text (e.g. a shapes scene)


@dataclass
class SkippedImage:
    """A gallery item left out of the index."""

    id: str  # gallery id of the item
    path: str  # its file
    reason: str  # why it could not be read


@dataclass
class BuildReport:
    """What a build indexed and what it skipped (stored in info.json under "build")."""

    indexed: int = 0  # images in the index
    skipped: list[SkippedImage] = field(default_factory=list)  # unreadable or non-image files
    seconds: float = 0.0  # wall time spent reading and encoding the images (this run)
    resumed_batches: int = 0  # batches reused from an interrupted earlier run

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "skipped_count": self.skipped_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildReport:
        return cls(indexed=int(data.get("indexed", 0)), skipped=[SkippedImage(**s) for s in data.get("skipped", [])],
                   seconds=float(data.get("seconds", 0.0)), resumed_batches=int(data.get("resumed_batches", 0)))


# ------------------------------------------------------------------------------------------- items
def items_from_images(folder: str | Path) -> list[GalleryItem]:
    """Every non-hidden file under `folder` (recursively, sorted); id = path relative to the folder.

    Files that turn out not to be images are skipped (and reported) by the build.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(path for path in folder.rglob("*")
                   if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts))
    if not files:
        raise ValueError(f"image folder {folder} is empty: no files to index")
    return [GalleryItem(id=path.relative_to(folder).as_posix(), path=str(path.resolve())) for path in files]


# ------------------------------------------------------------------------------------------- build
def build_gallery_index(model, items: list[GalleryItem], out_dir: Path, params: IndexParams, batch_size: int = 64,
                        progress: bool = True, resume: bool = True, model_id: str | None = None,
                        precision: str = "fp32", store_vision_features: bool = False) -> str:
    """Encode `items` with `model` and write the index folder; returns the model's weights fingerprint.

    `precision` (`cir_core.precision.GALLERY_PRECISIONS`) is how the images are encoded;
    the index records it, and a resumed build only reuses batches encoded the same way.
    `store_vision_features` also keeps each image's vision-encoder output (T x W, fp16:
    0.72 MB per image for ViT-g), so that an engine answering a query whose reference is a
    gallery image reads it instead of running the vision encoder.
    """
    from cir_core.checkpoints import weights_fingerprint
    from cir_core.precision import gallery_encoder, resolve_gallery_precision

    started = time.perf_counter()
    params.validate()
    if not items:
        raise ValueError("no gallery items to index (the folder or list is empty)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_unique_ids(items)
    config = model.config
    q, d = config.qformer.num_query_tokens, config.embed_dim
    dtype = np.float32 if params.kind == "flat" else np.float16
    fingerprint = weights_fingerprint(model)
    precision = resolve_gallery_precision(model, precision)
    check_destination(out_dir)
    checked_params(params, len(items), q, d)  # skipped images can only make it fail later, at writing
    manifest = {"version": WORK_VERSION, "fingerprint": fingerprint, "items": _items_digest(items),
                "batch_size": batch_size, "dtype": np.dtype(dtype).name, "shape": [q, d], "precision": precision,
                "vision_features": store_vision_features}
    with _destination_lock(out_dir):
        work = out_dir.parent / f".{out_dir.name}.work"
        resumed = _prepare_work_folder(work, manifest, resume)
        batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
        resumed -= _forget_changed_batches(work, batches)
        with gallery_encoder(model, precision) as encoder:
            _encode_missing(encoder, batches, work, dtype, progress, store_vision_features)

        skipped: list[SkippedImage] = []
        records: list[dict[str, Any]] = []
        for number, batch in enumerate(batches):
            done = json.loads((work / f"{_batch_name(number)}.json").read_text())
            skipped += [SkippedImage(**entry) for entry in done["skipped"]]
            records += [{"id": batch[i].id, "path": str(batch[i].path), "caption": batch[i].caption,
                         "label": batch[i].label, "size": size} for i, size in zip(done["kept"], done["sizes"])]
        _log_skipped(skipped)
        if not records:
            shutil.rmtree(work, ignore_errors=True)
            first = skipped[0]
            raise ValueError(f"no readable images among {len(items)} gallery items "
                             f"(e.g. {first.path}: {first.reason})")
        report = BuildReport(indexed=len(records), skipped=skipped, resumed_batches=resumed)
        info = {"model": model_id or getattr(model, "source", None) or config.name, "model_config": config.name,
                "fingerprint": fingerprint, "precision": precision, "preprocess": dataclasses.asdict(config.preprocess),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        contents = IndexContents(records=records, num_query_tokens=q, dim=d, info=info)
        report.seconds = round(time.perf_counter() - started, 3)
        contents.info["build"] = report.to_dict()
        vision = _stored_chunks(work, len(batches), _VISION_SUFFIX) if store_vision_features else None
        write_index(out_dir, _stored_chunks(work, len(batches)), contents, params, progress=progress,
                    vision_chunks=vision)
        shutil.rmtree(work, ignore_errors=True)
        logger.info("indexed %d images (%d skipped, %d batches resumed) in %.1fs", report.indexed,
                    report.skipped_count, resumed, time.perf_counter() - started)
        return fingerprint


@contextmanager
def _destination_lock(out_dir: Path):
    """Held while one build writes `out_dir`: a second build would share its work folder (and delete it).

    The lock is an flock on `.<name>.lock` beside the destination, so it dies with its process and a
    crashed build never blocks the next; the file is removed when the build ends.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = out_dir.parent / f".{out_dir.name}.lock"
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ValueError(f"another build is writing {out_dir} (it holds {path}); wait for it to finish or "
                             "choose another destination") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # locked a file its holder removed as it finished: lock the current one instead
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still locked: a build that opened it meanwhile sees it gone and retries
        handle.close()


def _check_unique_ids(items: list[GalleryItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"gallery item ids must be unique; {item.id!r} appears more than once")
        seen.add(item.id)


def _items_digest(items: list[GalleryItem]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, str(item.path), item.caption, item.label]).encode())
    return digest.hexdigest()


def _batch_name(number: int) -> str:
    return f"batch_{number:07d}"


def _prepare_work_folder(work: Path, manifest: dict[str, Any], resume: bool) -> int:
    """Reuse a matching work folder (returns its finished batch count) or start a fresh one."""
    manifest_path = work / _MANIFEST
    if resume and manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous == manifest:
            finished = len(list(work.glob("batch_*.json")))
            logger.info("resuming the build in %s: %d batches already encoded", work, finished)
            return finished
        logger.info("discarding %s: it was made for another model, item list or batch size", work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _write_atomic(manifest_path, json.dumps(manifest).encode())
    return 0


def _file_signature(path: str | Path) -> list[int] | None:
    """[size, modification time in ns] of a file (None when it cannot be read): what a resumed
    build compares to tell a file it encoded from one changed under the same name."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _forget_changed_batches(work: Path, batches: list[list[GalleryItem]]) -> int:
    """Unmark finished batches whose files changed since they were encoded; returns how many."""
    forgotten = 0
    for number, batch in enumerate(batches):
        marker = work / f"{_batch_name(number)}.json"
        if not marker.is_file():
            continue
        try:
            recorded = json.loads(marker.read_text()).get("files")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded != [_file_signature(item.path) for item in batch]:
            marker.unlink()
            forgotten += 1
    if forgotten:
        logger.info("%d encoded batches are encoded again: their files changed since", forgotten)
    return forgotten


def _encode_missing(model, batches: list[list[GalleryItem]], work: Path, dtype, progress: bool,
                    store_vision_features: bool = False) -> None:
    transform = ImageTransform(model.config.preprocess)
    pending = [number for number in range(len(batches)) if not (work / f"{_batch_name(number)}.json").is_file()]
    total = sum(len(batch) for batch in batches)
    # Files of the next batch are decoded on another thread while the model encodes this one
    # (decoding is a third of the work for small images; the model may hold a single thread).
    with tqdm(total=total, initial=total - sum(len(batches[n]) for n in pending), desc="encoding gallery", unit="img",
              disable=not progress) as bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as reader:
        upcoming = reader.submit(_read_batch, batches[pending[0]], transform) if pending else None
        for position, number in enumerate(pending):
            pixels, kept, sizes, skipped, signatures = upcoming.result()
            if position + 1 < len(pending):
                upcoming = reader.submit(_read_batch, batches[pending[position + 1]], transform)
            name = _batch_name(number)
            (work / f"{name}{_VISION_SUFFIX}").unlink(missing_ok=True)  # from an earlier encoding of changed files
            features = None
            if pixels and store_vision_features:
                vectors, features = _encode_batch_with_features(model, torch.stack(pixels))
                vectors = vectors.astype(dtype)
            elif pixels:
                vectors = _encode_batch(model, torch.stack(pixels)).astype(dtype)
            else:
                vectors = np.zeros((0, model.config.qformer.num_query_tokens, model.config.embed_dim), dtype=dtype)
            check_finite(vectors, f"the gallery batch from {batches[number][0].id!r}")
            if features is not None:
                with open(work / f"{name}{_VISION_SUFFIX}.tmp", "wb") as handle:
                    np.save(handle, features)
                os.replace(work / f"{name}{_VISION_SUFFIX}.tmp", work / f"{name}{_VISION_SUFFIX}")
            with open(work / f"{name}.npy.tmp", "wb") as handle:
                np.save(handle, vectors)
            os.replace(work / f"{name}.npy.tmp", work / f"{name}.npy")
            # The JSON marks the batch finished, so it is written after its vectors.
            _write_atomic(work / f"{name}.json", json.dumps({"kept": kept, "sizes": sizes, "skipped": skipped,
                                                             "files": signatures}).encode())
            bar.update(len(batches[number]))


def _read_batch(batch: list[GalleryItem], transform: ImageTransform):
    """Decoded pixels of the readable items, their positions in the batch and sizes, the skipped ones,
    and every file's signature as it was before reading."""
    pixels, kept, sizes, skipped = [], [], [], []
    signatures = [_file_signature(item.path) for item in batch]
    for position, item in enumerate(batch):
        try:
            tensor, size = _read_image(item.path, transform)
        except _UNREADABLE as error:
            skipped.append({"id": item.id, "path": str(item.path), "reason": f"{type(error).__name__}: {error}"})
            continue
        pixels.append(tensor)
        kept.append(position)
        sizes.append(size)
    return pixels, kept, sizes, skipped, signatures


def _read_image(path: str | Path, transform: ImageTransform) -> tuple[torch.Tensor, list[int]]:
    with Image.open(path) as image:
        check_image_size(*image.size)  # from the header: nothing is decoded yet
        image.load()
        rgb = to_rgb(image)
    return transform(rgb), list(rgb.size)


def _encode_batch(model, pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) pixels -> (B, Q, D) float32 target vectors."""
    return model.encode_target(pixels.to(model.device)).float().cpu().numpy()


def _encode_batch_with_features(model, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, S, S) pixels -> (B, Q, D) float32 target vectors and (B, T, W) fp16 vision features."""
    encoding = model.encode_images(pixels.to(model.device))
    return (encoding.targets.float().cpu().numpy(),
            encoding.vision_features.to(torch.float16).cpu().numpy())


def _stored_chunks(work: Path, count: int, suffix: str = ".npy") -> Iterator[np.ndarray]:
    for number in range(count):
        path = work / f"{_batch_name(number)}{suffix}"
        if not path.is_file():  # a batch without a readable image stores no vision features
            continue
        vectors = np.load(path)
        if len(vectors):
            yield vectors


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _log_skipped(skipped: list[SkippedImage]) -> None:
    for entry in skipped[:_SKIPS_LOGGED]:
        logger.warning("skipped %s: %s", entry.path, entry.reason)
    if len(skipped) > _SKIPS_LOGGED:
        logger.warning("... and %d more unreadable files", len(skipped) - _SKIPS_LOGGED)
    if skipped:
        logger.warning("%d gallery files were skipped as unreadable", len(skipped))
