"""On-disk layout of a gallery index and the one writer that produces it.

An index folder holds:

    info.json          how the index was made (model, weights fingerprint, preprocessing,
                       Q, D, count, kind, parameters, format version) and the sha256 and
                       byte size of every data file below
    metadata.jsonl     one JSON object per image, in row order: {"row", "id", "path",
                       "caption", "label", "size": [width, height]}
    vectors.faiss      kind "flat": a faiss IndexFlatIP over all N*Q target vectors (fp32)
    vectors_fp16.npy   kinds "ivfpq"/"hnsw": the (N, Q, D) target vectors in fp16 (a .npy file),
                       read row by row at search time to re-score candidates exactly
    coarse.faiss       kinds "ivfpq"/"hnsw": an approximate faiss index over the same N*Q vectors
    vision_fp16.npy    optional (`--store-vision-features`): the (N, T, W) vision-encoder output
                       of every image in fp16, so that a gallery image used as a query reference
                       skips the vision encoder; info.json "vision_features" gives its shape

Vector row r (in vectors.faiss and coarse.faiss) belongs to image row r // Q; vector
r % Q of that image. The folder is written into a staging folder beside the destination
and renamed into place, so a crash never leaves a half-written index at the destination.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cir_core.atomic import staged_folder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INFO_FILE = "info.json"
METADATA_FILE = "metadata.jsonl"
FLAT_FILE = "vectors.faiss"
STORE_FILE = "vectors_fp16.npy"
COARSE_FILE = "coarse.faiss"
VISION_FILE = "vision_fp16.npy"
# Everything an index folder may hold; an index is replaced only when it holds nothing else.
INDEX_FILES = (INFO_FILE, METADATA_FILE, FLAT_FILE, STORE_FILE, COARSE_FILE, VISION_FILE)
KINDS = ("flat", "ivfpq", "hnsw")
LAYOUT = "vector row r belongs to image row r // Q"
# An IVF-PQ index trains k-means codebooks; below this many vectors they cannot be trained.
MIN_IVFPQ_VECTORS = 1024
_HASH_BLOCK = 1 << 22
# Vectors added to a faiss index per call while building (bounds the fp32 working copy).
_ADD_BATCH_VECTORS = 1 << 18


class GalleryIndexError(ValueError):
    """An index folder that cannot be used; the message names the problem."""


HNSW_QUANTIZER_LISTS = 1024  # ivfpq with more lists than this assigns vectors through an HNSW graph


@dataclass
class IndexParams:
    """How the vectors are indexed; the approximate kinds re-score candidates exactly."""

    kind: str = "flat"  # "flat" (exact), "ivfpq" or "hnsw" (approximate candidates, exact fp16 re-scoring)
    nlist: int = 0  # IVF lists; 0 = the power of two at or above sqrt(N*Q), between 16 and 16384
    nprobe: int = 0  # IVF lists visited per query; 0 = nlist // 20 (at least 16)
    pq_m: int = 0  # PQ sub-quantizers (bytes per vector at 8 bits); 0 = D // 8
    pq_bits: int = 8  # bits per PQ sub-quantizer code
    hnsw_m: int = 32  # HNSW graph neighbours per node (vectors stored as 8-bit scalar-quantized)
    ef_construction: int = 80  # HNSW candidate list while inserting
    ef_search: int = 128  # HNSW candidate list while searching (raised to the number of vectors fetched)
    candidates: int = 200  # distinct images re-scored exactly per query (approximate kinds)
    train_size: int = 0  # vectors sampled to train the approximate index; 0 = max(40 * nlist, 16384)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; choose from {list(KINDS)}")
        positive = {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                    "ef_search": self.ef_search, "candidates": self.candidates}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"index parameter {name} must be at least 1, got {value}")
        if min(self.nlist, self.nprobe, self.pq_m, self.train_size) < 0:
            raise ValueError("index parameters nlist, nprobe, pq_m and train_size must be >= 0 (0 = automatic)")
        if not 1 <= self.pq_bits <= 16:
            raise ValueError(f"pq_bits must be between 1 and 16, got {self.pq_bits}")

    def resolved(self, num_vectors: int, dim: int) -> IndexParams:
        """A copy with the automatic (0) values replaced by those used for this many vectors."""
        # About sqrt(N*Q) lists keeps each list's share of the data (and so the PQ residuals)
        # the same at every gallery size; with too few lists recall falls as N grows.
        nlist = self.nlist or int(min(16384, max(16, 2 ** math.ceil(math.log2(math.sqrt(max(num_vectors, 1)))))))
        pq_m = self.pq_m or max(1, dim // 8)
        if dim % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the vector width D={dim}")
        # Visiting a fixed share of the lists keeps recall steady as nlist grows with the gallery
        # (measured on 1M synthetic images, 8,192 lists: 16 lists gave recall@10 0.86, 384 gave 0.96).
        nprobe = min(nlist, self.nprobe or max(16, nlist // 20))
        train_size = self.train_size or max(40 * nlist, 16384)
        return dataclasses.replace(self, nlist=nlist, nprobe=nprobe, pq_m=pq_m, train_size=min(train_size, num_vectors))

    def factory(self) -> str:
        """The faiss index_factory string of the approximate index (after `resolved`)."""
        if self.kind == "ivfpq":
            # Past HNSW_QUANTIZER_LISTS lists, vectors find their list through an HNSW graph over the
            # centroids instead of comparing with every centroid (which would dominate build time).
            quantizer = "_HNSW32" if self.nlist > HNSW_QUANTIZER_LISTS else ""
            return f"IVF{self.nlist}{quantizer},PQ{self.pq_m}x{self.pq_bits}"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},SQ8"
        return "Flat"


# ------------------------------------------------------------------------------------------- files
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class _HashingWriter:
    """A binary file written front to back whose sha256 is computed on the way."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = open(path, "wb")
        self._digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        self.bytes += len(view)
        return self._handle.write(view)

    def close(self) -> dict[str, Any]:
        self._handle.close()
        return {"sha256": self._digest.hexdigest(), "bytes": self.bytes}


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def check_destination(out_dir: Path) -> None:
    """ValueError unless `out_dir` is absent, empty or an index folder holding nothing but its own files
    (its info.json may be damaged): writing an index replaces the whole folder, which must never take
    anything else with it, such as a dataset folder that has an info.json of its own."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; refusing to replace it")
    present = sorted(path.name for path in out_dir.iterdir())
    foreign = [name for name in present if name not in INDEX_FILES]
    try:
        info = json.loads((out_dir / INFO_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        info = None  # missing or damaged: the file names alone tell
    if (foreign and INFO_FILE not in present) or (isinstance(info, dict) and info.get("layout") != LAYOUT):
        raise ValueError(f"{out_dir} is not a gallery index (no {INFO_FILE} written by an index build); "
                         "refusing to replace it (choose another folder)")
    if foreign:
        raise ValueError(f"{out_dir} holds files that are not part of its index ({', '.join(foreign[:5])}); "
                         "refusing to replace it (move them or choose another folder)")


def checked_params(params: IndexParams, count: int, q: int, d: int) -> IndexParams:
    """`params` resolved for `count` images of Q vectors of width D; ValueError when that index cannot be
    trained (checked before encoding too, so no gallery is encoded for an index that cannot be written)."""
    params.validate()
    if params.kind == "flat":
        return params
    total = count * q
    if params.kind == "ivfpq" and total < MIN_IVFPQ_VECTORS:
        raise ValueError(f"kind 'ivfpq' needs at least {MIN_IVFPQ_VECTORS} vectors to train its codebooks "
                         f"(this gallery has {count} images x {q} = {total}); use kind 'flat'")
    resolved = params.resolved(total, d)
    if params.kind == "ivfpq":
        # k-means needs at least as many training vectors as centroids: nlist lists, 2^pq_bits codes.
        for name, centroids in (("nlist", resolved.nlist), ("pq_bits", 2 ** resolved.pq_bits)):
            if centroids > resolved.train_size:
                raise ValueError(f"kind 'ivfpq' with {name}={getattr(resolved, name)} trains {centroids} centroids, "
                                 f"more than the {resolved.train_size} training vectors of this gallery "
                                 f"({count} images x {q}); choose a smaller {name} or kind 'flat'")
    return resolved


# ------------------------------------------------------------------------------------------- reader
class StoreReader:
    """The (N, Q, D) fp16 store read with positional reads: store[rows] and store[start:stop].

    Not memory-mapped on purpose: the page cache keeps recently read rows fast either way,
    but a mapping makes every touched row count as resident memory of the process, and with
    the page cache's large folios (Linux 6.x) one touched 16 KB row maps up to 2 MB, so random
    candidate reads soon map the whole file. Reads hold no lock and move no file position,
    so several threads may read at once.
    """

    def __init__(self, path: Path):
        with open(path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(handle)
            except (ValueError, SyntaxError, TypeError) as error:  # numpy parses the header as a Python literal
                raise GalleryIndexError(f"{path} is not a readable .npy array ({error})") from None
            self._offset = handle.tell()
        if fortran_order or len(shape) != 3:
            raise GalleryIndexError(f"{path} does not hold an (N, Q, D) C-ordered array")
        self.path = path
        self.shape: tuple[int, int, int] = shape
        self.dtype = np.dtype(dtype)
        self._row_bytes = shape[1] * shape[2] * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise ValueError("store slices must be contiguous")
            out = np.empty((max(0, stop - start), *self.shape[1:]), dtype=self.dtype)
            self._read_into(memoryview(out).cast("B"), start)
            return out
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        buffer = memoryview(out).cast("B")
        # Runs of consecutive rows are read with one call.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for first, last in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])):
            self._read_into(buffer[first * self._row_bytes:last * self._row_bytes], int(rows[first]))
        return out

    def _read_into(self, buffer: memoryview, row: int) -> None:
        position, done = self._offset + row * self._row_bytes, 0
        while done < len(buffer):
            count = os.preadv(self._fd, [buffer[done:]], position + done)
            if count == 0:
                raise GalleryIndexError(f"{self.path} ends early: it is truncated or damaged")
            done += count


# ------------------------------------------------------------------------------------------- writer
@dataclass
class IndexContents:
    """What goes into an index besides its vectors."""

    records: list[dict[str, Any]]  # per image in row order: id, path, caption, label, size
    num_query_tokens: int  # Q: vectors per image
    dim: int  # D: vector width
    info: dict[str, Any]  # model, fingerprint, preprocess, build report... merged into info.json


def write_index(out_dir: str | Path, chunks: Iterable[np.ndarray], contents: IndexContents,
                params: IndexParams, progress: bool = True,
                vision_chunks: Iterable[np.ndarray] | None = None) -> Path:
    """Write an index folder atomically from (n, Q, D) vector chunks in row order.

    The chunks must hold exactly len(contents.records) images in total; so must
    `vision_chunks`, (n, T, W) vision features stored in fp16 when given.
    """
    out_dir = Path(out_dir)
    check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    count, q, d = len(contents.records), contents.num_query_tokens, contents.dim
    if count == 0:
        raise ValueError("an index needs at least one image")
    seen_ids: set[str] = set()
    for record in contents.records:
        if record["id"] in seen_ids:
            raise ValueError(f"gallery image ids must be unique; {record['id']!r} appears more than once")
        seen_ids.add(record["id"])
    resolved = checked_params(params, count, q, d)
    with staged_folder(out_dir) as staging:
        files = {}
        if params.kind == "flat":
            files[FLAT_FILE] = _write_flat(staging / FLAT_FILE, chunks, count, q, d, progress)
        else:
            files[STORE_FILE] = _write_store(staging / STORE_FILE, chunks, count, q, d, progress)
            files[COARSE_FILE] = _write_coarse(staging / COARSE_FILE, staging / STORE_FILE, resolved, progress)
        files[METADATA_FILE] = _write_metadata(staging / METADATA_FILE, contents.records)
        extra = {}
        if vision_chunks is not None:
            vision_chunks = iter(vision_chunks)
            first = next(vision_chunks, None)
            if first is None or first.ndim != 3:
                raise ValueError("vision features must come as (n, T, W) chunks")
            tokens, width = first.shape[1:]
            files[VISION_FILE] = _write_store(staging / VISION_FILE, _chain(first, vision_chunks), count,
                                              tokens, width, progress, "vision features")
            extra["vision_features"] = {"file": VISION_FILE, "shape": [count, tokens, width], "dtype": "float16"}
        info = {
            "format_version": FORMAT_VERSION,
            "kind": params.kind,
            **contents.info,
            "num_query_tokens": q,
            "embed_dim": d,
            "count": count,
            "layout": LAYOUT,
            "params": dataclasses.asdict(resolved),
            "faiss_factory": resolved.factory(),
            **extra,
            "files": files,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2))
    logger.info("wrote %s index of %d images (%d vectors) to %s", params.kind, count, count * q, out_dir)
    return out_dir


def _checked_chunks(chunks: Iterable[np.ndarray], count: int, q: int, d: int, progress: bool,
                    desc: str) -> Iterator[np.ndarray]:
    seen = 0
    with tqdm(total=count, desc=desc, unit="img", disable=not progress) as bar:
        for chunk in chunks:
            if chunk.ndim != 3 or chunk.shape[1:] != (q, d):
                raise ValueError(f"vector chunk of shape {tuple(chunk.shape)} does not match (n, {q}, {d})")
            check_finite(chunk, f"{desc} rows {seen}..{seen + len(chunk) - 1}")
            seen += chunk.shape[0]
            if seen > count:
                raise ValueError(f"more vectors than the {count} images described")
            bar.update(chunk.shape[0])
            yield chunk
    if seen != count:
        raise ValueError(f"vectors for {seen} images but {count} images described")


def check_finite(vectors: np.ndarray, what: str) -> None:
    """ValueError when `vectors` hold NaN or infinity: every score against them would be NaN."""
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors.reshape(len(vectors), -1))).any(axis=1).sum())
        raise ValueError(f"{bad} of {len(vectors)} images in {what} have non-finite vectors (NaN or infinity); "
                         "the model's weights or config are broken, so no index is written")


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _write_flat(path: Path, chunks, count: int, q: int, d: int, progress: bool) -> dict[str, Any]:
    import faiss

    index = faiss.IndexFlatIP(d)
    for chunk in _checked_chunks(chunks, count, q, d, progress, "flat index"):
        index.add(np.ascontiguousarray(chunk.reshape(-1, d), dtype=np.float32))
    faiss.write_index(index, str(path))
    return file_entry(path)


def _write_store(path: Path, chunks, count: int, q: int, d: int, progress: bool,
                 desc: str = "fp16 store") -> dict[str, Any]:
    writer = _HashingWriter(path)
    try:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                  "shape": (count, q, d)}
        np.lib.format.write_array_header_1_0(writer, header)
        for chunk in _checked_chunks(chunks, count, q, d, progress, desc):
            writer.write(np.ascontiguousarray(chunk, dtype=np.float16))
    finally:
        entry = writer.close()
    return entry


def _write_coarse(path: Path, store_path: Path, params: IndexParams, progress: bool) -> dict[str, Any]:
    import faiss

    store = np.load(store_path, mmap_mode="r")
    count, q, d = store.shape
    total = count * q
    flat_store = store.reshape(total, d)
    index = faiss.index_factory(d, params.factory(), faiss.METRIC_INNER_PRODUCT)
    concrete = faiss.downcast_index(index)
    if params.kind == "hnsw":
        concrete.hnsw.efConstruction = params.ef_construction
    else:
        # Polysemous codes only serve Hamming-distance filtering, which search does not use, and
        # cost most of the training time; candidates are re-scored exactly, so 10 PQ k-means
        # iterations (instead of 25) are enough.
        concrete.do_polysemous_training = False
        concrete.pq.cp.niter = 10
        concrete.cp.niter = 10  # the coarse k-means too: candidates are re-scored, lists need not be optimal
    rng = np.random.default_rng(0)
    sample_rows = np.sort(rng.choice(total, size=params.train_size, replace=False))
    logger.info("training %s on %d of %d vectors", params.factory(), len(sample_rows), total)
    index.train(np.asarray(flat_store[sample_rows], dtype=np.float32))
    # Plain sequential reads rather than the mapping: mapped pages of a store larger than
    # RAM would all count as this process's resident memory.
    with open(store_path, "rb") as handle, \
            tqdm(total=total, desc=f"{params.kind} index", unit="vec", unit_scale=True, disable=not progress) as bar:
        handle.seek(store.offset)
        for start in range(0, total, _ADD_BATCH_VECTORS):
            rows = min(_ADD_BATCH_VECTORS, total - start)
            batch = np.fromfile(handle, dtype=np.float16, count=rows * d).reshape(rows, d)
            index.add(torch.from_numpy(batch).float().numpy())  # torch converts fp16 with SIMD
            bar.update(rows)
    faiss.write_index(index, str(path))
    return file_entry(path)


def _write_metadata(path: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    writer = _HashingWriter(path)
    try:
        for row, record in enumerate(records):
            size = record.get("size")
            line = {"row": row, "id": str(record["id"]), "path": str(record.get("path") or ""),
                    "caption": record.get("caption"), "label": record.get("label"),
                    "size": list(size) if size is not None else None}
            writer.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
    finally:
        entry = writer.close()
    return entry
