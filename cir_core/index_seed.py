"""Index seeds: a gallery's target vectors shipped beside the model that encoded them.

A fresh machine (a Space waking up, a new clone) would otherwise encode the whole default
gallery before its first answer (5,233 scenes: tens of seconds on two cores). A seed holds
the vectors in fp16 with the image ids, the model's weights fingerprint and how the images
were encoded; `index_from_seed` turns it into a regular index folder in a second, for the
local image paths of the same gallery. A seed of other weights or of another gallery is
refused (the caller then encodes the gallery as usual, and says so in the log).

File: one `.npz` (no pickles) with `vectors` (N, Q, D) float16, `ids` (N,) str and
`meta` (a JSON string: format, fingerprint, model config name, precision, image sizes).
"""
from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cir_core.index import GalleryIndex
from cir_core.index_build import GalleryItem
from cir_core.index_store import IndexContents, IndexParams, write_index

logger = logging.getLogger(__name__)

SEED_FORMAT = 1


def export_seed(index: GalleryIndex, path: str | Path) -> Path:
    """Write the vectors of `index` (any kind) as a seed file."""
    path = Path(path)
    vectors = np.concatenate([index.vectors(range(start, min(start + 4096, len(index))))
                              for start in range(0, len(index), 4096)]).astype(np.float16)
    meta = {"format": SEED_FORMAT, "fingerprint": index.fingerprint, "model_config": index.model_name,
            "precision": index.info.get("precision", "fp32"), "sizes": index.sizes}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "wb") as handle:  # np.savez would append .npz to a path without it
        np.savez(handle, vectors=vectors, ids=np.array(index.ids, dtype=str), meta=np.array(json.dumps(meta)))
    staging.replace(path)
    return path


@dataclass(frozen=True)
class SeedFile:
    """A seed's ids, metadata and vector shape; the vectors themselves are read on demand
    (`vectors()`), so that a start which finds its index already cached never reads them."""

    path: Path
    ids: list[str]
    meta: dict
    shape: tuple[int, ...]

    def vectors(self) -> np.ndarray:
        """(N, Q, D) float16."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                vectors = data["vectors"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{self.path} is not an index seed ({type(error).__name__}: {error})") from None
        if vectors.shape != self.shape:
            raise ValueError(f"{self.path} changed while being read")
        return vectors


def _vector_shape(archive: np.lib.npyio.NpzFile) -> tuple[int, ...]:
    """The shape of the archive's `vectors` member, from its .npy header alone."""
    with archive.zip.open("vectors.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(member)
    return tuple(shape)


def open_seed(path: str | Path) -> SeedFile:
    """The seed at `path` without its vectors; ValueError when it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, meta = [str(i) for i in data["ids"]], json.loads(str(data["meta"]))
            shape = _vector_shape(data)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not an index seed ({type(error).__name__}: {error})") from None
    if not isinstance(meta, dict) or meta.get("format") != SEED_FORMAT or len(shape) != 3 or len(ids) != shape[0]:
        raise ValueError(f"{path} is not an index seed of format {SEED_FORMAT}")
    return SeedFile(path, ids, meta, shape)


def read_seed(path: str | Path) -> tuple[np.ndarray, list[str], dict]:
    """(vectors (N, Q, D) float16, ids, meta) of a seed file; ValueError when it is not one."""
    seed = open_seed(path)
    return seed.vectors(), seed.ids, seed.meta


def seed_problem(meta: dict, ids: list[str], model, items: list[GalleryItem], precision: str) -> str | None:
    """Why the seed cannot stand for encoding `items` with `model` at `precision` (None: it can)."""
    from cir_core.checkpoints import weights_fingerprint

    fingerprint = weights_fingerprint(model)
    if meta.get("fingerprint") != fingerprint:
        return f"it holds the vectors of other weights (fingerprint {meta.get('fingerprint')}, the model's {fingerprint})"
    if ids != [item.id for item in items]:
        return "it holds another gallery's images"
    if precision not in ("auto", meta.get("precision")):
        return f"it was encoded in {meta.get('precision')}, not {precision}"
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

    vectors, meta = seed.vectors(), seed.meta
    q, d = vectors.shape[1:]
    sizes = meta.get("sizes") or [None] * len(items)
    records = [{"id": item.id, "path": str(item.path), "caption": item.caption, "label": item.label, "size": size}
               for item, size in zip(items, sizes)]
    info = {"model": getattr(model, "source", None) or model.config.name, "model_config": model.config.name,
            "fingerprint": meta["fingerprint"], "precision": meta["precision"], "stored_as": "float16 seed",
            "preprocess": asdict(model.config.preprocess), "build": {"indexed": len(records)}}
    contents = IndexContents(records=records, num_query_tokens=q, dim=d, info=info)
    write_index(out_dir, [vectors.astype(np.float32)], contents, IndexParams(kind="flat"), progress=progress)
    logger.info("gallery index of %d images written from the shipped seed (no encoding)", len(records))
    return GalleryIndex.load(out_dir, model=model)
