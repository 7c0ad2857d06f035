"""Encoding a gallery into an index folder: item lists, resumable batched encoding, the build report.

The build encodes images in batches with the model's own preprocessing and
`model.encode_target`; reader threads decode and preprocess the next batches while the
model encodes one (`encode_batches`: on a GPU several, in the dtype its vision encoder
takes, in page-locked memory). It persists every finished batch in a work folder beside the
destination (`.<name>.work/`). A rerun of an interrupted build with the same model and
items continues after the last finished batch, re-encoding any batch whose files changed
on disk since (size or modification time) or whose stored results do not read back (an
empty file left by a crash). When every batch is encoded, the index is written atomically
(`index_store.write_index`) and the work folder removed. One build at a time writes a
destination: it holds a lock (`.<name>.lock`) from start to finish; a second one is refused
(`BuildInProgressError`) or waits for it (`wait_for_build`).

Files that cannot be read as images, or are too large or too narrow to be pictures the
model reads, are skipped, logged and listed in the build report (stored in info.json); a
gallery with no readable image is an error.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections import deque
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

from cir_core.data.spec import GalleryItem
from cir_core.index_store import (
    IndexContents,
    IndexParams,
    check_destination,
    check_finite,
    checked_params,
    write_index,
)
from cir_core.safe_paths import outside_root
from cir_core.transforms import ImageTransform, check_image_size, to_rgb

logger = logging.getLogger(__name__)

WORK_VERSION = 2  # batches record their files' size and modification time
_MANIFEST = "manifest.json"
# Errors PIL raises for files that are not (complete, sane) images; ImageSizeError is a ValueError.
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SKIPS_LOGGED = 20
_VISION_SUFFIX = ".vision.npy"
MAX_READ_WORKERS = 8  # decoding threads feeding a GPU at most (each holds a batch of pixels)



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

    Entries that lead outside the folder through a link are left out (one log line): an app
    serving the gallery would otherwise show files of the folder a link points into.
    Files that turn out not to be images are skipped (and reported) by the build.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    real_root = folder.resolve()
    files, outside = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        (outside if outside_root(real_root, relative) else files).append(path)
    if outside:
        logger.warning("left out %d entries of %s that lead outside it through links (e.g. %s)", len(outside),
                       folder, outside[0].relative_to(folder).as_posix())
    if not files:
        raise ValueError(f"image folder {folder} is empty: no files to index"
                         + (f" inside it ({len(outside)} lead outside it through links)" if outside else ""))
    return [GalleryItem(id=path.relative_to(folder).as_posix(), path=str(path.resolve())) for path in files]


def gallery_root(paths: list[str | Path]) -> str:
    """The deepest folder holding every file of `paths`, links resolved: an index records it, and
    `GalleryIndex.load` refuses metadata naming a file outside it."""
    return os.path.commonpath([os.path.dirname(os.path.realpath(path)) for path in paths])


# ------------------------------------------------------------------------------------------- build
def build_gallery_index(model, items: list[GalleryItem], out_dir: Path, params: IndexParams, batch_size: int = 64,
                        progress: bool = True, resume: bool = True, model_id: str | None = None,
                        precision: str = "fp32", store_vision_features: bool = False,
                        read_workers: int | None = None) -> str:
    """Encode `items` with `model` and write the index folder; returns the model's weights fingerprint.

    `precision` (`cir_core.precision.GALLERY_PRECISIONS`) is how the images are encoded;
    the index records it, and a resumed build only reuses batches encoded the same way.
    `store_vision_features` also keeps each image's vision-encoder output (T x W, fp16:
    0.72 MB per image for ViT-g), so that an engine answering a query whose reference is a
    gallery image reads it instead of running the vision encoder. `read_workers` threads decode
    and preprocess the images ahead of the model (None: `default_read_workers`); they change
    only the speed, never the vectors.
    """
    from cir_core.checkpoints import weights_fingerprint
    from cir_core.precision import gallery_encoder, resolve_gallery_precision

    started = time.perf_counter()
    params.validate()
    if not items:
        raise ValueError("no gallery items to index (the folder or list is empty)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if read_workers is not None and read_workers < 1:
        raise ValueError(f"read_workers must be at least 1, got {read_workers}")
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
    with destination_lock(out_dir):
        work = out_dir.parent / f".{out_dir.name}.work"
        resumed = _prepare_work_folder(work, manifest, resume)
        batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
        resumed -= _forget_unusable_batches(work, batches, manifest)
        with gallery_encoder(model, precision) as encoder:
            _encode_missing(encoder, batches, work, dtype, progress, store_vision_features, read_workers)

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
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "gallery_root": gallery_root([record["path"] for record in records])}
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


class BuildInProgressError(ValueError):
    """Another build holds the destination (`wait_for_build` waits for it to end)."""


def _lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


@contextmanager
def destination_lock(out_dir: Path):
    """Held while one build writes `out_dir`: a second build would share its work folder (and delete it).

    The lock is an flock on `.<name>.lock` beside the destination, so it dies with its process and a
    crashed build never blocks the next; the file is removed when the build ends.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = _lock_path(out_dir)
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise BuildInProgressError(f"another build is writing {out_dir} (it holds {path}); wait for it to "
                                       "finish or choose another destination") from None
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


def wait_for_build(out_dir: Path, timeout: float, poll_seconds: float = 0.5) -> bool:
    """Wait until no build holds `out_dir`; False when one still does after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            handle = open(_lock_path(out_dir), "rb")
        except FileNotFoundError:
            return True
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True  # released when the handle closes
            except BlockingIOError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_seconds)


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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            previous = None
        if previous == manifest:
            finished = len(list(work.glob("batch_*.json")))
            logger.info("resuming the build in %s: %d batches already encoded", work, finished)
            return finished
        logger.info("discarding %s: it was made for another model, item list or batch size", work)
    if work.is_symlink() or work.is_file():
        work.unlink()
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


def _forget_unusable_batches(work: Path, batches: list[list[GalleryItem]], manifest: dict[str, Any]) -> int:
    """Unmark the finished batches that cannot be reused: their files changed since they were encoded,
    or their stored record or vectors do not read back (a crash can leave an empty file behind a
    finished mark); returns how many were unmarked."""
    changed, damaged = 0, []
    for number, batch in enumerate(batches):
        marker = work / f"{_batch_name(number)}.json"
        if not marker.is_file():
            continue
        try:
            record = json.loads(marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            record = None
        problem = _record_problem(record, len(batch))
        if problem is not None:
            damaged.append(f"{marker.name} {problem}")
        elif record["files"] != [_file_signature(item.path) for item in batch]:
            changed += 1
        elif (problem := _stored_batch_problem(work, number, len(record["kept"]), manifest)) is not None:
            damaged.append(problem)
        else:
            continue
        marker.unlink()
    if changed:
        logger.info("%d encoded batches are encoded again: their files changed since", changed)
    if damaged:
        logger.warning("%d encoded batches are encoded again: their stored results are damaged (%s)", len(damaged),
                       damaged[0])
    return changed + len(damaged)


def _record_problem(record: Any, size: int) -> str | None:
    """What is wrong with a finished batch's record (kept rows, their sizes, skipped files, file
    signatures) for a batch of `size` items, or None."""
    if not isinstance(record, dict) or not all(isinstance(record.get(key), list)
                                               for key in ("kept", "sizes", "skipped", "files")):
        return "is not a batch record"
    kept, sizes = record["kept"], record["sizes"]
    if (any(not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < size for row in kept)
            or kept != sorted(set(kept)) or len(sizes) != len(kept) or len(record["files"]) != size):
        return "does not describe this batch"
    if any(not (isinstance(s, list) and len(s) == 2 and all(isinstance(n, int) for n in s)) for s in sizes):
        return "has malformed image sizes"
    fields = {field.name for field in dataclasses.fields(SkippedImage)}
    if any(not (isinstance(entry, dict) and set(entry) == fields and all(isinstance(v, str) for v in entry.values()))
           for entry in record["skipped"]) or len(kept) + len(record["skipped"]) != size:
        return "has malformed skipped entries"
    return None


def _stored_batch_problem(work: Path, number: int, kept: int, manifest: dict[str, Any]) -> str | None:
    """What is wrong with a finished batch's stored arrays (from their .npy headers and sizes), or None."""
    name = _batch_name(number)
    problem = _npy_problem(work / f"{name}.npy", (kept, *manifest["shape"]), np.dtype(manifest["dtype"]))
    if problem is None and manifest["vision_features"] and kept:
        problem = _npy_problem(work / f"{name}{_VISION_SUFFIX}", None, np.dtype(np.float16), rows=kept)
    return problem


def _npy_problem(path: Path, shape: tuple[int, ...] | None, dtype: np.dtype, rows: int | None = None) -> str | None:
    """Why `path` is not a complete .npy file of `shape` (or any (rows, T, W)) and `dtype`, or None."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            stored_shape, fortran_order, stored_dtype = read_header(handle)
            header_bytes = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError, SyntaxError, TypeError, EOFError) as error:
        return f"{path.name} does not read ({type(error).__name__}: {error})"
    wanted = shape if shape is not None else (rows, *stored_shape[1:]) if len(stored_shape) == 3 else None
    if fortran_order or stored_dtype != dtype or tuple(stored_shape) != wanted:
        return f"{path.name} holds {stored_dtype} {tuple(stored_shape)}, not {dtype} {wanted}"
    declared = header_bytes + math.prod(stored_shape) * dtype.itemsize
    if size != declared:
        return f"{path.name} has {size} bytes, not the {declared} its header declares"
    return None


def default_read_workers(device: torch.device) -> int:
    """Threads that decode and preprocess gallery images: enough to keep a GPU fed; on a CPU, where
    they take cores from the encoder, one (docs/performance.md has the measurements)."""
    if device.type == "cuda":
        return max(1, min(MAX_READ_WORKERS, os.cpu_count() or 1))
    return 1


@dataclass
class ReadBatch:
    """One batch of gallery files, decoded and preprocessed for the model."""

    pixels: torch.Tensor | None  # (B', 3, S, S) the readable images in the vision encoder's dtype; None when none is
    kept: list[int]  # positions in the batch of the B' readable images
    sizes: list[list[int]]  # their [width, height] as stored
    skipped: list[dict[str, str]]  # the unreadable ones: id, path, reason
    signatures: list[list[int] | None]  # every file's [size, modification time in ns] from before reading it


def read_batches(batches: list[list[GalleryItem]], transform: ImageTransform, workers: int = 1,
                 pixel_dtype: torch.dtype = torch.float32, pin: bool = False) -> Iterator[ReadBatch]:
    """`batches` read in order, `workers` batches at a time on as many threads, ahead of the caller.

    `pin` puts the pixels in page-locked memory, from which a GPU copies them while it computes.
    """
    upcoming = iter(batches)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as readers:
        in_flight = deque(readers.submit(_read_batch, batch, transform, pixel_dtype, pin)
                          for batch in itertools.islice(upcoming, workers))
        while in_flight:
            done = in_flight.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                in_flight.append(readers.submit(_read_batch, following, transform, pixel_dtype, pin))
            yield done


@dataclass
class EncodedBatch:
    """One batch of gallery files through the model."""

    read: ReadBatch  # what was read, kept and skipped
    vectors: np.ndarray | None  # (B', Q, D) float32 target vectors of the kept images; None when none was kept
    vision_features: np.ndarray | None  # (B', T, W) fp16 vision features, when asked for and any was kept


def encode_batches(model, batches: list[list[GalleryItem]], store_vision_features: bool = False,
                   workers: int | None = None) -> Iterator[EncodedBatch]:
    """`batches` encoded by `model` in order, their files read on `workers` threads ahead of it
    (None: `default_read_workers`)."""
    workers = workers if workers is not None else default_read_workers(model.device)
    # Pixels travel in the dtype the vision encoder casts them to anyway (fp16 on a GPU: half the bytes).
    pixel_dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
    reads = read_batches(batches, ImageTransform(model.config.preprocess), workers, pixel_dtype,
                         pin=model.device.type == "cuda")
    for read in reads:
        vectors = features = None
        if read.pixels is not None and store_vision_features:
            vectors, features = _encode_batch_with_features(model, read.pixels)
        elif read.pixels is not None:
            vectors = _encode_batch(model, read.pixels)
        yield EncodedBatch(read=read, vectors=vectors, vision_features=features)


def _encode_missing(model, batches: list[list[GalleryItem]], work: Path, dtype, progress: bool,
                    store_vision_features: bool = False, workers: int | None = None) -> None:
    pending = [number for number in range(len(batches)) if not (work / f"{_batch_name(number)}.json").is_file()]
    total = sum(len(batch) for batch in batches)
    encoded = encode_batches(model, [batches[number] for number in pending], store_vision_features, workers)
    empty = np.zeros((0, model.config.qformer.num_query_tokens, model.config.embed_dim), dtype=dtype)
    with tqdm(total=total, initial=total - sum(len(batches[n]) for n in pending), desc="encoding gallery", unit="img",
              disable=not progress) as bar:
        for number, batch in zip(pending, encoded):
            name = _batch_name(number)
            (work / f"{name}{_VISION_SUFFIX}").unlink(missing_ok=True)  # from an earlier encoding of changed files
            vectors = batch.vectors.astype(dtype) if batch.vectors is not None else empty
            check_finite(vectors, f"the gallery batch from {batches[number][0].id!r}")
            if batch.vision_features is not None:
                with open(work / f"{name}{_VISION_SUFFIX}.tmp", "wb") as handle:
                    np.save(handle, batch.vision_features)
                os.replace(work / f"{name}{_VISION_SUFFIX}.tmp", work / f"{name}{_VISION_SUFFIX}")
            with open(work / f"{name}.npy.tmp", "wb") as handle:
                np.save(handle, vectors)
            os.replace(work / f"{name}.npy.tmp", work / f"{name}.npy")
            read = batch.read
            # The JSON marks the batch finished, so it is written after its vectors.
            _write_atomic(work / f"{name}.json", json.dumps({"kept": read.kept, "sizes": read.sizes,
                                                             "skipped": read.skipped,
                                                             "files": read.signatures}).encode())
            bar.update(len(batches[number]))


def _read_batch(batch: list[GalleryItem], transform: ImageTransform, pixel_dtype: torch.dtype = torch.float32,
                pin: bool = False) -> ReadBatch:
    """The readable items of `batch` decoded and stacked (see ReadBatch), the unreadable ones listed."""
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
    stacked = torch.stack(pixels).to(pixel_dtype) if pixels else None
    if stacked is not None and pin:
        stacked = stacked.pin_memory()
    return ReadBatch(pixels=stacked, kept=kept, sizes=sizes, skipped=skipped, signatures=signatures)


def _read_image(path: str | Path, transform: ImageTransform) -> tuple[torch.Tensor, list[int]]:
    with Image.open(path) as image:
        check_image_size(*image.size)  # from the header: nothing is decoded yet
        image.load()
        rgb = to_rgb(image)
    return transform(rgb), list(rgb.size)


def _encode_batch(model, pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) pixels -> (B, Q, D) float32 target vectors."""
    return model.encode_target(pixels.to(model.device, non_blocking=True)).float().cpu().numpy()


def _encode_batch_with_features(model, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, S, S) pixels -> (B, Q, D) float32 target vectors and (B, T, W) fp16 vision features."""
    encoding = model.encode_images(pixels.to(model.device, non_blocking=True))
    return (encoding.targets.float().cpu().numpy(),
            encoding.vision_features.to(torch.float16).cpu().numpy())


def _stored_chunks(work: Path, count: int, suffix: str = ".npy") -> Iterator[np.ndarray]:
    for number in range(count):
        path = work / f"{_batch_name(number)}{suffix}"
        if not path.is_file():  # a batch without a readable image stores no vision features
            continue
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            # Checked when the build started: damaged since. Unmarked, so the next build encodes it again.
            (work / f"{_batch_name(number)}.json").unlink(missing_ok=True)
            raise ValueError(f"the encoded batch {path} is damaged ({type(error).__name__}: {error}); "
                             "run the build again to encode it again") from None
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
