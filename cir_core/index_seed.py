"""Index seeds: a gallery's target vectors shipped beside the model that encoded them.

A fresh machine (a Space waking up, a new clone) would otherwise encode the whole default
gallery before its first answer (5,233 scenes: tens of seconds on two cores). A seed holds
the vectors in fp16 with the image ids, the model's weights fingerprint and how the images
were encoded; `index_from_seed` turns it into a regular index folder in a second, for the
local image paths of the same gallery. A seed of other weights or of another gallery is
refused (the caller then encodes the gallery as usual, and says so in the log).

File: one `.npz` (no pickles, members stored uncompressed) with `vectors` (N, Q, D) float16,
`ids` (N,) str and `meta` (a JSON string: format, fingerprint, model config name, precision,
image sizes).

A seed may come with a downloaded model, so it is read as untrusted input: every member's
declared size must fit inside the file before anything is allocated, and every metadata
field is checked for type, range and allowed values before it is used.
"""
from __future__ import annotations

import json
import logging
import math
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cir_core.index import GalleryIndex
from cir_core.index_build import GalleryItem, gallery_root
from cir_core.index_store import IndexContents, IndexParams, write_index
from cir_core.precision import GALLERY_PRECISIONS

logger = logging.getLogger(__name__)

SEED_FORMAT = 1
SEED_MEMBERS = ("vectors.npy", "ids.npy", "meta.npy")
SEED_PRECISIONS = tuple(precision for precision in GALLERY_PRECISIONS if precision != "auto")
MAX_ID_CHARS = 1024  # a gallery id is a file's path relative to its gallery at most
# The metadata is a few fields plus one image size per image ("[1024, 768], " is 13 characters).
_META_CHARS_BASE = 4096
_META_CHARS_PER_IMAGE = 64
_MAX_IMAGE_SIDE = 1 << 20
_MAX_FINGERPRINT_CHARS = 64
_MAX_MODEL_NAME_CHARS = 1024
_LFS_POINTER = b"version https://git-lfs"


class SeedError(ValueError):
    """A file that is not a usable index seed; the message names the file and the problem."""


def check_seed_destination(path: str | Path, index_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """`path` when a seed may be written there; SeedError otherwise.

    Refused always: a folder, device, FIFO or socket (never written through), a path inside
    `index_dir` (the index being exported) or above it, a parent that is not a folder.
    Refused unless `overwrite`: an existing file that is not a seed, and a symbolic link
    (never followed: with `overwrite` the link itself is replaced).
    """
    path = Path(path).expanduser()
    if path.name in ("", ".", ".."):
        raise SeedError(f"{path} names a folder, not a seed file")
    target = Path(os.path.realpath(path.parent)) / path.name  # the last component is not followed
    if index_dir is not None:
        index_dir = Path(os.path.realpath(Path(index_dir).expanduser()))
        if target == index_dir or index_dir in target.parents or target in index_dir.parents:
            raise SeedError(f"{path} is inside the index folder {index_dir} (or holds it); write the seed elsewhere")
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise SeedError(f"cannot write a seed at {path}: {error}") from None
    if status is not None:
        mode = status.st_mode
        if stat.S_ISDIR(mode):
            raise SeedError(f"{path} is a folder; give a file name for the seed")
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise SeedError(f"{path} is a device, FIFO or socket, not a file; refusing to write there")
        if stat.S_ISLNK(mode) and not overwrite:
            raise SeedError(f"{path} is a symbolic link; refusing to write through it "
                            "(give the file's own path, or --overwrite to replace the link)")
        if stat.S_ISREG(mode) and not overwrite and not is_seed_file(path):
            raise SeedError(f"{path} exists and is not an index seed; refusing to replace it "
                            "(choose another file name, or --overwrite)")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SeedError(f"cannot write a seed at {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SeedError(f"cannot write a seed at {path}: {parent} is not writable")
    return path


def is_seed_file(path: str | Path) -> bool:
    """Whether `path` is a regular file holding an index seed (what `--export-seed` may replace)."""
    try:
        open_seed(path)
    except SeedError:
        return False
    return True


def export_seed(index: GalleryIndex, path: str | Path, overwrite: bool = False) -> Path:
    """Write the vectors of `index` (any kind) as a seed file at `path` (see `check_seed_destination`)."""
    path = check_seed_destination(path, index.folder, overwrite)
    precision = index.info.get("precision", "fp32")
    if precision not in SEED_PRECISIONS:
        raise SeedError(f"index {index.folder} records precision {precision!r:.40}; a seed needs one of "
                        f"{', '.join(SEED_PRECISIONS)}")
    vectors = np.concatenate([index.vectors(range(start, min(start + 4096, len(index))))
                              for start in range(0, len(index), 4096)]).astype(np.float16)
    meta = {"format": SEED_FORMAT, "fingerprint": index.fingerprint,
            "model_config": index.model_name[:_MAX_MODEL_NAME_CHARS], "precision": precision, "sizes": index.sizes}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent, delete=False)
    staging = Path(handle.name)
    try:
        with handle:  # np.savez would append .npz to a path without it
            np.savez(handle, vectors=vectors, ids=np.array(index.ids, dtype=str), meta=np.array(json.dumps(meta)))
        os.chmod(staging, 0o644)
        check_seed_destination(path, index.folder, overwrite)  # again: the build took a while
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class SeedFile:
    """A seed's ids, checked metadata and vector shape; the vectors themselves are read on demand
    (`vectors()`), so that a start which finds its index already cached never reads them."""

    path: Path
    ids: list[str]
    meta: dict
    shape: tuple[int, ...]

    def vectors(self) -> np.ndarray:
        """(N, Q, D) float16."""
        with _SeedArchive(self.path) as archive:
            vectors = archive.read("vectors.npy", kind="f")
        if vectors.shape != self.shape:
            raise SeedError(f"{self.path} changed while being read")
        return vectors


class _SeedArchive:
    """The members of a seed file, each read only after its declared size was checked against the file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as handle:
                start = handle.read(len(_LFS_POINTER))
            if start == _LFS_POINTER:
                raise SeedError(f"{path} is a Git LFS pointer, not the seed itself (fetch it with `git lfs pull`)")
            self.size = os.stat(path).st_size
            self.zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as error:
            if isinstance(error, SeedError):
                raise
            raise SeedError(f"{path} is not an index seed ({type(error).__name__}: {error})") from None

    def __enter__(self) -> _SeedArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
        """(shape, dtype, header bytes) of member `name`, its declared data size checked against the file."""
        try:
            entry = self.zip.getinfo(name)
        except KeyError:
            raise SeedError(f"{self.path} is not an index seed (it has no {name})") from None
        if entry.flag_bits & 0x1:
            raise SeedError(f"{self.path} is not an index seed: {name} is encrypted")
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size:
            raise SeedError(f"{self.path} is not an index seed: {name} is compressed (seeds store their members)")
        if entry.header_offset + entry.compress_size > self.size:
            raise SeedError(f"{self.path} is not an index seed: {name} declares {entry.file_size} bytes, "
                            f"past the end of the {self.size}-byte file")
        try:
            with self.zip.open(entry) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(member)
                header_bytes = member.tell()
        except (OSError, ValueError, SyntaxError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile) as error:
            raise SeedError(f"{self.path} is not an index seed ({name}: {type(error).__name__}: {error})") from None
        if fortran_order or dtype.hasobject or any(not isinstance(n, int) or n < 0 for n in shape):
            raise SeedError(f"{self.path} is not an index seed: {name} is not a plain C-ordered array")
        data_bytes = math.prod(shape) * dtype.itemsize
        if header_bytes + data_bytes != entry.file_size:
            raise SeedError(f"{self.path} is not an index seed: {name} declares {data_bytes} bytes of data "
                            f"in a member of {entry.file_size} bytes")
        return tuple(shape), dtype, header_bytes

    def read(self, name: str, kind: str) -> np.ndarray:
        """Member `name`, whose dtype must be of numpy kind `kind` ("f": float16, "U": text)."""
        shape, dtype, header_bytes = self.header(name)
        if dtype.kind != kind or (kind == "f" and dtype != np.float16):
            raise SeedError(f"{self.path} is not an index seed: {name} holds {dtype}")
        array = np.empty(shape, dtype=dtype)
        buffer, done = memoryview(array.reshape(-1)).cast("B"), 0
        try:
            with self.zip.open(name) as member:
                member.read(header_bytes)
                while done < len(buffer):
                    count = member.readinto(buffer[done:])
                    if not count:
                        raise EOFError(f"{name} ends early")
                    done += count
                member.read(1)  # reaches the member's end, where the zip checks its CRC
        except (OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile) as error:
            raise SeedError(f"{self.path} is not an index seed ({name}: {type(error).__name__}: {error})") from None
        return array


def open_seed(path: str | Path) -> SeedFile:
    """The seed at `path` with its checked ids and metadata, without its vectors; SeedError when it is not one."""
    path = Path(path)
    with _SeedArchive(path) as archive:
        shape, dtype, _ = archive.header("vectors.npy")
        if len(shape) != 3 or min(shape) < 1 or dtype != np.float16:
            raise SeedError(f"{path} is not an index seed: its vectors are {dtype} of shape {shape}, "
                            "not (N, Q, D) float16")
        count = shape[0]
        id_shape, id_dtype, _ = archive.header("ids.npy")
        if id_shape != (count,) or id_dtype.kind != "U" or id_dtype.itemsize > 4 * MAX_ID_CHARS:
            raise SeedError(f"{path} is not an index seed: its ids are {id_dtype} of shape {id_shape}, "
                            f"not {count} texts of at most {MAX_ID_CHARS} characters")
        meta_shape, meta_dtype, _ = archive.header("meta.npy")
        meta_budget = _META_CHARS_BASE + _META_CHARS_PER_IMAGE * count
        if meta_shape != () or meta_dtype.kind != "U" or meta_dtype.itemsize > 4 * meta_budget:
            raise SeedError(f"{path} is not an index seed: its metadata is {meta_dtype} of shape {meta_shape}, "
                            f"not one text of at most {meta_budget} characters")
        ids = [str(i) for i in archive.read("ids.npy", kind="U")]
        text = str(archive.read("meta.npy", kind="U")[()])
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise SeedError(f"{path} is not an index seed: its metadata is not JSON ({error})") from None
    problem = _meta_problem(meta, count) or _ids_problem(ids)
    if problem:
        raise SeedError(f"{path} is not an index seed of format {SEED_FORMAT}: {problem}")
    return SeedFile(path, ids, meta, shape)


def _is_whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _meta_problem(meta, count: int) -> str | None:
    """What is wrong with a seed's parsed metadata for `count` images, or None."""
    if not isinstance(meta, dict):
        return f"its metadata is {type(meta).__name__}, not an object"
    if not _is_whole(meta.get("format"), SEED_FORMAT, SEED_FORMAT):
        return f"format {meta.get('format')!r:.40}"
    fingerprint = meta.get("fingerprint")
    if not (isinstance(fingerprint, str) and 0 < len(fingerprint) <= _MAX_FINGERPRINT_CHARS
            and all(c in "0123456789abcdef" for c in fingerprint)):
        return f"fingerprint {fingerprint!r:.80} is not a hexadecimal weights fingerprint"
    model_config = meta.get("model_config")
    if not (isinstance(model_config, str) and len(model_config) <= _MAX_MODEL_NAME_CHARS):
        return f"model_config {model_config!r:.80} is not a model name"
    if meta.get("precision") not in SEED_PRECISIONS:
        return f"precision {meta.get('precision')!r:.40} is not one of {', '.join(SEED_PRECISIONS)}"
    sizes = meta.get("sizes")
    if sizes is not None:
        if not isinstance(sizes, list) or len(sizes) != count:
            return f"sizes must be a list of {count} image sizes"
        for size in sizes:
            if size is not None and not (isinstance(size, list) and len(size) == 2
                                         and all(_is_whole(side, 1, _MAX_IMAGE_SIDE) for side in size)):
                return f"image size {size!r:.60} is not [width, height]"
    return None


def _ids_problem(ids: list[str]) -> str | None:
    if len(set(ids)) != len(ids):
        return "its image ids are not unique"
    if any(not image_id for image_id in ids):
        return "an image id is empty"
    return None


def seed_problem(meta: dict, ids: list[str], model, items: list[GalleryItem], precision: str) -> str | None:
    """Why the seed (metadata checked by `open_seed`) cannot stand for encoding `items` with `model`
    at `precision` (None: it can)."""
    from cir_core.checkpoints import weights_fingerprint

    fingerprint = weights_fingerprint(model)
    if meta["fingerprint"] != fingerprint:
        return f"it holds the vectors of other weights (fingerprint {meta['fingerprint']}, the model's {fingerprint})"
    if ids != [item.id for item in items]:
        return "it holds another gallery's images"
    if precision not in ("auto", meta["precision"]):
        return f"it was encoded in {meta['precision']}, not {precision}"
    return None


def usable_seed(seed: str | Path, model, items: list[GalleryItem], precision: str = "auto") -> SeedFile | None:
    """The seed when it stands for encoding `items` with `model` at `precision`; else None,
    with a log line saying why the gallery is encoded instead. Its vectors are not read yet."""
    try:
        opened = open_seed(seed)
    except ValueError as error:
        logger.warning("encoding the gallery: %s", error)
        return None
    problem = seed_problem(opened.meta, opened.ids, model, items, precision)
    q, d = model.config.qformer.num_query_tokens, model.config.embed_dim
    if problem is None and opened.shape[1:] != (q, d):
        problem = f"its vectors are {opened.shape[1:]}, the model's ({q}, {d})"
    if problem is not None:
        logger.warning("encoding the gallery instead of using the shipped index %s: %s", seed, problem)
        return None
    return opened


def index_from_seed(seed: SeedFile, model, items: list[GalleryItem], out_dir: str | Path,
                    progress: bool = True) -> GalleryIndex:
    """The exact (flat) index of `items` written from a usable seed's vectors (`usable_seed`)."""
    from dataclasses import asdict

    if seed.ids != [item.id for item in items]:
        raise SeedError(f"{seed.path} holds another gallery's images")
    vectors, meta = seed.vectors(), seed.meta
    q, d = vectors.shape[1:]
    sizes = meta.get("sizes") or [None] * len(items)
    records = [{"id": item.id, "path": str(item.path), "caption": item.caption, "label": item.label, "size": size}
               for item, size in zip(items, sizes)]
    info = {"model": getattr(model, "source", None) or model.config.name, "model_config": model.config.name,
            "fingerprint": meta["fingerprint"], "precision": meta["precision"], "stored_as": "float16 seed",
            "preprocess": asdict(model.config.preprocess), "build": {"indexed": len(records)},
            "gallery_root": gallery_root([record["path"] for record in records])}
    contents = IndexContents(records=records, num_query_tokens=q, dim=d, info=info)
    write_index(out_dir, [vectors.astype(np.float32)], contents, IndexParams(kind="flat"), progress=progress)
    logger.info("gallery index of %d images written from the shipped seed (no encoding)", len(records))
    return GalleryIndex.load(out_dir, model=model)
