"""Which cached index serves which model and gallery, and where the cache lives.

An app given a benchmark split or a plain folder of images indexes the gallery once and
keeps the index under the cache root (~/.cache/cir, or $CIR_CACHE) in `indexes/<name>`.
The name is made of checked parts only: the model's config name and a label of the
gallery (both reduced to letters, digits, '_' and '-'), the weights fingerprint, a digest
of the gallery's resolved root folder, a digest of its contents (every item's id, path,
caption, label, file size and modification time, in row order) and the precision its
images were encoded in (one of a fixed list). So another folder of the same base name, or
the same folder after files were added, removed or changed, gets an index of its own;
once it is written, the index of the gallery's earlier contents is removed.

A start that finds another process building the same index waits for it (up to
`BUILD_WAIT_SECONDS`) and then serves what it wrote; leftovers of writers that were
killed mid-write are removed (`cir_core.atomic.remove_abandoned`).
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cir_core.atomic import remove_abandoned
from cir_core.checkpoints import weights_fingerprint
from cir_core.index import GalleryIndex, GalleryIndexError
from cir_core.data.spec import BenchmarkSource
from cir_core.index_build import BuildInProgressError, GalleryItem, destination_lock, items_from_images, wait_for_build
from cir_core.model import SPRCModel
from cir_core.precision import (
    GALLERY_PRECISIONS,
    check_gallery_precision,
    has_large_vision_encoder,
    resolve_gallery_precision,
)

logger = logging.getLogger(__name__)

CACHE_ENV = "CIR_CACHE"
DEFAULT_CACHE = "~/.cache/cir"
INDEXES = "indexes"  # the cache's subfolder of gallery indexes
# How long a start waits for another process's build of the same index before giving up.
BUILD_WAIT_SECONDS = 1800.0
_CONCRETE_PRECISIONS = tuple(precision for precision in GALLERY_PRECISIONS if precision != "auto")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_LABEL_LENGTH = 40


class CacheError(ValueError):
    """Neither the cache root nor a temporary folder can hold the cache."""


# ------------------------------------------------------------------------------------------- cache root
def default_cache_root() -> Path:
    """$CIR_CACHE, else ~/.cache/cir (read when called, so a changed environment is seen)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_problem(root: Path) -> str | None:
    """Why `root` cannot hold the cache (None: it can); creates it when missing and writes a byte there."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root) as probe:
            probe.write(b"\0")
            probe.flush()
    except OSError as error:
        return str(error)
    return None


def usable_cache_root(root: str | Path | None = None) -> Path:
    """`root` (default `default_cache_root()`) when it can hold the cache, else a fresh temporary folder
    (said in one log line, removed when the process exits); CacheError when neither can."""
    root = Path(root).expanduser() if root is not None else default_cache_root()
    problem = cache_problem(root)
    if problem is None:
        return root
    try:
        fallback = Path(tempfile.mkdtemp(prefix="cir-cache-"))
        fallback_problem = cache_problem(fallback)
    except OSError as error:
        fallback_problem = str(error)
    if fallback_problem is not None:
        raise CacheError(f"the cache {root} cannot be used ({problem}), nor a temporary folder "
                         f"({fallback_problem}); set {CACHE_ENV} to a writable folder")
    logger.warning("the cache %s cannot be used (%s); using %s for this run instead (set %s to a writable folder "
                   "to keep indexes across starts)", root, problem, fallback, CACHE_ENV)
    atexit.register(shutil.rmtree, fallback, ignore_errors=True)  # a gallery index can take gigabytes
    return fallback


# ------------------------------------------------------------------------------------------- names
def _label(text: str, fallback: str) -> str:
    """`text` reduced to a short file-name part of letters, digits, '_' and '-'."""
    return _LABEL_CHARS.sub("-", text).strip("-_")[:_LABEL_LENGTH] or fallback


def gallery_contents_digest(items: list[GalleryItem]) -> str:
    """Changes when an item is added, removed, reordered, relabelled, or its file changes (size, mtime)."""
    digest = hashlib.sha256()
    for item in items:
        try:
            status = os.stat(item.path)
            signature = [status.st_size, status.st_mtime_ns]
        except OSError:
            signature = None
        digest.update(json.dumps([item.id, str(item.path), item.caption, item.label, signature]).encode())
    return digest.hexdigest()[:16]


def _gallery_root(items: list[GalleryItem]) -> str:
    try:
        return os.path.realpath(os.path.commonpath([str(item.path) for item in items]))
    except ValueError:  # absolute and relative paths mixed: no common folder
        return ""


@dataclass(frozen=True)
class GalleryKey:
    """What a cached index stands for: model, gallery root and gallery contents."""

    stem: str  # model label, weights fingerprint, gallery label, root digest: the same for every version
    contents: str  # digest of the gallery's items and their files (`gallery_contents_digest`)

    @classmethod
    def of(cls, model: SPRCModel, items: list[GalleryItem], label: str, root: str | Path | None = None) -> GalleryKey:
        """The key of `items` (a gallery labelled `label`, under `root`: default their common folder)."""
        resolved = os.path.realpath(root) if root is not None else _gallery_root(items)
        root_digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
        stem = "-".join([_label(model.config.name, "model"), _label(weights_fingerprint(model), "weights"),
                         _label(label, "gallery"), root_digest])
        return cls(stem=stem, contents=gallery_contents_digest(items))

    def folder_name(self, precision: str, vision_features: bool = False) -> str:
        if precision not in _CONCRETE_PRECISIONS:
            raise ValueError(f"an index's precision must be one of {', '.join(_CONCRETE_PRECISIONS)}, "
                             f"got {precision!r:.40}")
        return f"{self.stem}-{self.contents}-{precision}{'-vision' if vision_features else ''}"

    def other_versions(self, folder: Path) -> list[Path]:
        """Indexes beside `folder` of the same model, gallery root and precision, made of other contents."""
        suffix = folder.name[len(self.stem) + 1 + len(self.contents):]
        pattern = re.compile(re.escape(self.stem) + r"-[0-9a-f]{16}" + re.escape(suffix))
        try:
            siblings = list(folder.parent.iterdir())
        except OSError:
            return []
        return sorted(path for path in siblings
                      if path.name != folder.name and pattern.fullmatch(path.name) and path.is_dir())


# ------------------------------------------------------------------------------------------- serving
def default_gallery_index(model: SPRCModel, items: list[GalleryItem], cache_root: str | Path, label: str,
                          root: str | Path | None = None, progress: bool = True, precision: str = "auto",
                          seed: str | Path | None = None) -> GalleryIndex:
    """The index of `items` for `model`, built on first use and cached under `cache_root`.

    `label` names the gallery for people (a benchmark split, a folder's base name) and `root`
    is its folder (default: the items' common folder); see the module docstring for how the
    cache folder is named. `precision` (`cir_core.precision.GALLERY_PRECISIONS`) is how
    images are encoded; "auto" is bf16 on a CPU with bf16 units (about twice fp32's speed,
    vectors within 2e-3). `seed` (`cir_core.index_seed`): shipped vectors of the gallery
    that stand for encoding it, when they come from this model's weights.
    """
    check_gallery_precision(precision)
    indexes = Path(cache_root) / INDEXES
    remove_abandoned(indexes)
    key = GalleryKey.of(model, items, label, root)
    if seed is not None and Path(seed).is_file():
        index = _index_from_seed(model, items, indexes, key, label, seed, precision, progress)
        if index is not None:
            return index
    precision = resolve_gallery_precision(model, precision)
    # A large vision encoder (ViT-g) costs seconds per query on a CPU; its stored output lets a
    # query whose reference is a gallery image skip it (0.7 MB per image). Small models recompute.
    store_vision = has_large_vision_encoder(model)
    folder = indexes / key.folder_name(precision, store_vision)
    index = _cached(folder, model)
    if index is not None:
        return index
    older = _say_if_changed(key, folder, label)

    def build() -> GalleryIndex:
        logger.info("indexing %d gallery images (%s) into %s (once, %s)", len(items), label, folder, precision)
        return GalleryIndex.build(model, items, folder, progress=progress, precision=precision,
                                  store_vision_features=store_vision)

    index = _write_once(folder, model, build)
    _remove(older)
    return index


def _index_from_seed(model, items, indexes: Path, key: GalleryKey, label: str, seed: str | Path, precision: str,
                     progress: bool) -> GalleryIndex | None:
    """The index written from a usable seed (None: the seed cannot stand for encoding, as logged)."""
    from cir_core.index_seed import index_from_seed, usable_seed

    seeded = usable_seed(seed, model, items, precision)  # logs why not when it cannot be used
    if seeded is None:
        return None
    folder = indexes / key.folder_name(seeded.meta["precision"])  # checked against the list of precisions
    index = _cached(folder, model)
    if index is not None:
        return index
    older = _say_if_changed(key, folder, label)

    def write() -> GalleryIndex:
        with destination_lock(folder):  # as a build does: a second start waits instead of writing it too
            written = _cached(folder, model)  # by a start that held the lock before this one
            return written if written is not None else index_from_seed(seeded, model, items, folder, progress)

    try:
        index = _write_once(folder, model, write)
    except BuildInProgressError:
        raise
    except ValueError as error:  # vectors unreadable past a sound header: encode instead
        logger.warning("encoding the gallery instead of using the shipped index: %s", error)
        return None
    _remove(older)
    return index


def _cached(folder: Path, model: SPRCModel) -> GalleryIndex | None:
    if not folder.is_dir():
        return None
    try:
        return GalleryIndex.load(folder, model=model)
    except (GalleryIndexError, OSError) as error:
        logger.warning("writing the cached gallery index again: %s", error)
        return None


def _say_if_changed(key: GalleryKey, folder: Path, label: str) -> list[Path]:
    """The indexes of the gallery's earlier contents, after a log line saying it is indexed again."""
    older = key.other_versions(folder)
    if older:
        logger.info("%s changed since it was indexed (files added, removed or modified): indexing it again", label)
    return older


def _write_once(folder: Path, model: SPRCModel, write: Callable[[], GalleryIndex]) -> GalleryIndex:
    """`write()`'s index at `folder`; while another process writes it, that process's index once it is done."""
    deadline = time.monotonic() + BUILD_WAIT_SECONDS
    while True:
        try:
            return write()
        except BuildInProgressError:
            remaining = max(0.0, deadline - time.monotonic())
            logger.info("another process is indexing this gallery into %s: waiting for it (up to %.0f s)", folder,
                        remaining)
            if not wait_for_build(folder, remaining):
                raise BuildInProgressError(f"another process was still indexing this gallery into {folder} after "
                                           f"{BUILD_WAIT_SECONDS:.0f} s; start again once it has finished") from None
        index = _cached(folder, model)
        if index is not None:
            return index


def _remove(folders: list[Path]) -> None:
    """Remove superseded indexes (and the work folders of their interrupted builds) no build is writing."""
    for folder in folders:
        if wait_for_build(folder, 0):
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(folder.parent / f".{folder.name}.work", ignore_errors=True)


def serving_index(model: SPRCModel, cache_root: Path, index_dir: str | Path | None = None,
                  source: BenchmarkSource | None = None, gallery_data: str | Path | None = None,
                  progress: bool = True, precision: str = "auto", seed: str | Path | None = None) -> GalleryIndex:
    """The index an app serves: the prebuilt `index_dir` (refused if another model built it), else
    the gallery of `source` (a labelled benchmark split), else every image under `gallery_data`,
    indexed once and cached under `cache_root` (`default_gallery_index`; `seed` stands for encoding
    a benchmark's gallery when it comes from this model's weights)."""
    if index_dir is not None:
        return GalleryIndex.load(index_dir, model=model)
    if source is not None:
        return default_gallery_index(model, source.gallery_items(), cache_root, source.name, progress=progress,
                                     precision=precision, seed=seed)
    folder = Path(gallery_data).expanduser().resolve()
    return default_gallery_index(model, items_from_images(folder), cache_root, folder.name, root=folder,
                                 progress=progress, precision=precision)
