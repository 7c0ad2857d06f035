"""GalleryIndex: the gallery's target vectors, searchable by SPRC's max-over-Q score.

SPRC keeps Q vectors t_iq per gallery image i and scores a query u by
max_q <u, t_iq>. The index stores all N*Q vectors (vector row r belongs to image r // Q;
see `index_store` for the folder layout) and answers:

- `search(query, k, exclude)`: the k best images. Kind "flat" is exact: a faiss flat
  inner-product search fetches k' vectors, k' growing until k distinct images are found
  and every vector that could tie the k-th image has been seen; the candidates are then
  re-scored from their stored vectors and ordered by (score desc, row asc). Kinds "ivfpq"
  and "hnsw" fetch candidate images from an approximate faiss index over the same vectors
  and re-score them exactly from an fp16 store on disk, read on demand.
- `score_all(query)`: the exact score of every image (e.g. to rank a ground truth that is
  outside the top k).
- `vectors(rows)`: the stored (n, Q, D) vectors.
- `vision_features(row)`: the image's stored (1, T, W) fp16 vision features, or None when
  the index was built without them (`store_vision_features`).

`GalleryIndex.build` encodes images with a model (resumably, see `index_build`) and
`GalleryIndex.load` refuses folders built by another model, damaged since, or naming image
files outside the gallery folder the build recorded.
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from cir_core.index_build import BuildReport, GalleryItem, SkippedImage, build_gallery_index
from cir_core.index_store import (
    COARSE_FILE,
    FLAT_FILE,
    FORMAT_VERSION,
    INDEX_FILES,
    INFO_FILE,
    KINDS,
    METADATA_FILE,
    STORE_FILE,
    VISION_FILE,
    GalleryIndexError,
    IndexParams,
    StoreReader,
    sha256_file,
)
from cir_core.safe_paths import outside_root
from cir_core.scoring import max_over_queries_numpy

# Scores of one query computed two ways (faiss, numpy) may differ by float rounding; the
# flat search fetches every vector within this margin of the k-th image's score.
TIE_MARGIN = 1e-4
# When the flat search would fetch more than this share of all vectors, scoring every
# image directly is cheaper than another faiss pass.
_EXHAUSTIVE_SHARE = 0.25
# Vectors fetched from the approximate index per wanted candidate image, before growing.
_FETCH_PER_CANDIDATE = 8
# Images scored per block in `score_all` (bounds the fp32 working copy to about 64 MB).
_SCORE_BLOCK_BYTES = 64 << 20

__all__ = ["BuildReport", "GalleryIndex", "GalleryIndexError", "GalleryItem", "IndexParams", "SearchHit",
           "SkippedImage"]


@dataclass
class SearchHit:
    """One gallery image returned by `GalleryIndex.search`."""

    row: int  # image row in the index (0..N-1), the row of `vectors` and `score_all`
    id: str  # gallery image id
    score: float  # max over the image's Q vectors of the dot product with the query
    path: str  # image file
    caption: str | None  # free-text caption stored with the image
    label: str | None  # free-text or JSON label stored with the image (e.g. a shapes scene)


class GalleryIndex:
    """A loaded index folder; read-only after loading, so searches may run from several threads."""

    def __init__(self, folder: Path, info: dict[str, Any]):
        """Use `GalleryIndex.load` or `GalleryIndex.build`; this opens an already verified folder."""
        self.folder = folder
        self.info = info
        self.kind: str = info["kind"]
        self.count: int = int(info["count"])  # N images
        self.num_query_tokens: int = int(info["num_query_tokens"])  # Q vectors per image
        self.dim: int = int(info["embed_dim"])  # D
        self.params = IndexParams(**info["params"])
        self.report = BuildReport.from_dict(info.get("build", {}))
        self._lock = threading.Lock()
        self._metadata, self._line_starts = _open_metadata(folder / METADATA_FILE, self.count)
        if self.kind == "flat":
            self._flat = _read_faiss(folder / FLAT_FILE, faiss.IO_FLAG_MMAP_IFC)
            # The view below trusts these numbers: a wider embed_dim would read past the vectors.
            self._check_faiss_shape(self._flat, FLAT_FILE)
            raw = faiss.rev_swig_ptr(faiss.downcast_index(self._flat).get_xb(), self._flat.ntotal * self.dim)
            self._store = raw.reshape(self.count, self.num_query_tokens, self.dim)  # (N, Q, D) fp32 view
            self._coarse = None
        else:
            self._flat = None
            self._store = StoreReader(folder / STORE_FILE)  # (N, Q, D) fp16, read on demand
            # IVF lists (ivfpq) or the quantized vectors (hnsw) stay on disk, memory-mapped.
            mapping = faiss.IO_FLAG_MMAP if self.kind == "ivfpq" else faiss.IO_FLAG_MMAP_IFC
            self._coarse = _read_faiss(folder / COARSE_FILE, mapping)
            self._check_faiss_shape(self._coarse, COARSE_FILE)
            self.set_search_params()
        expected = (self.count, self.num_query_tokens, self.dim)
        if self._store.shape != expected:
            raise GalleryIndexError(f"index {folder} is damaged: vectors have shape {self._store.shape}, "
                                    f"info.json says {expected}")
        # Read row by row like the fp16 store (not memory-mapped: mapped rows would stay
        # resident in this process, up to the whole file, 1.6 GB for CIRR val with ViT-g).
        self._vision = StoreReader(folder / VISION_FILE) if VISION_FILE in info["files"] else None
        if self._vision is not None and (list(self._vision.shape) != info.get("vision_features", {}).get("shape")
                                         or self._vision.shape[0] != self.count):
            raise GalleryIndexError(f"index {folder} is damaged: {VISION_FILE} has shape {self._vision.shape}, "
                                    f"info.json says {info.get('vision_features', {}).get('shape')} "
                                    f"for {self.count} images")

    def _check_faiss_shape(self, index, name: str) -> None:
        expected = (self.count * self.num_query_tokens, self.dim)
        if (index.ntotal, index.d) != expected:
            raise GalleryIndexError(f"index {self.folder} is damaged: {name} holds {index.ntotal} vectors of width "
                                    f"{index.d}, {INFO_FILE} says {expected[0]} of width {expected[1]}")

    def set_search_params(self, nprobe: int | None = None, candidates: int | None = None) -> None:
        """Search-time settings of an approximate index (in memory; the folder is not changed).

        Call before serving: searches running meanwhile may see either setting.
        """
        changes = {name: value for name, value in (("nprobe", nprobe), ("candidates", candidates)) if value is not None}
        if any(value < 1 for value in changes.values()):
            raise ValueError(f"nprobe and candidates must be at least 1, got {changes}")
        self.params = dataclasses.replace(self.params, **changes)
        if self.kind == "ivfpq":
            quantizer = faiss.downcast_index(faiss.extract_index_ivf(self._coarse).quantizer)
            if isinstance(quantizer, faiss.IndexHNSW):  # must list at least nprobe candidate lists
                quantizer.hnsw.efSearch = max(64, self.params.nprobe)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, model, items: list[GalleryItem], out_dir: str | Path, batch_size: int = 64, progress: bool = True,
              resume: bool = True, model_id: str | None = None, kind: str = "flat",
              params: IndexParams | None = None, precision: str = "fp32",
              store_vision_features: bool = False) -> GalleryIndex:
        """Encode `items` with `model` and write an index folder at `out_dir` (see `index_build`).

        `params` overrides `kind` and tunes the approximate kinds; `precision` is how the
        images are encoded (`cir_core.precision.GALLERY_PRECISIONS`); `store_vision_features`
        keeps each image's vision features (fp16) for queries whose reference is a gallery
        image. The returned index carries the build report (`.report`: indexed and skipped images).
        """
        params = params or IndexParams(kind=kind)
        fingerprint = build_gallery_index(model, items, Path(out_dir), params, batch_size=batch_size,
                                          progress=progress, resume=resume, model_id=model_id,
                                          precision=precision, store_vision_features=store_vision_features)
        return cls.load(out_dir, expected_fingerprint=fingerprint, verify=False)

    @classmethod
    def load(cls, folder: str | Path, model=None, expected_fingerprint: str | None = None,
             verify: bool = True) -> GalleryIndex:
        """Open an index folder; refuses another model's index and damaged folders.

        `model` (or `expected_fingerprint`) must match the weights fingerprint recorded at
        build time. File sizes are always checked; `verify=False` skips the sha256 pass
        (seconds per GB) for large galleries whose files are trusted. Data files stay on
        disk (memory-mapped, or read row by row for the fp16 store), so loading reads
        little beyond the metadata.
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"gallery index folder {folder} does not exist")
        info = _read_info(folder)
        if model is not None and expected_fingerprint is None:
            from cir_core.checkpoints import weights_fingerprint

            expected_fingerprint = weights_fingerprint(model)
        if expected_fingerprint is not None and info.get("fingerprint") != expected_fingerprint:
            raise GalleryIndexError(
                f"index {folder} was built by model {info.get('model')!r} with weights fingerprint "
                f"{info.get('fingerprint')}, but this model's fingerprint is {expected_fingerprint}; "
                "rebuild the index with this model (cir build-index)")
        _check_files(folder, info["files"], verify)
        if model is not None:
            _check_vision_shape(folder, info, model)
        index = cls(folder, info)
        _check_paths(index)
        return index

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return self.count

    @property
    def model_name(self) -> str:
        return str(self.info.get("model"))

    @property
    def fingerprint(self) -> str:
        return str(self.info.get("fingerprint"))

    def record(self, row: int) -> dict[str, Any]:
        """The metadata of one image row: id, path, caption, label, size [w, h]."""
        start, end = self._line_starts[row], self._line_starts[row + 1]
        damaged = f"index {self.folder} is damaged: line {row + 1} of {METADATA_FILE} is not an image record"
        try:
            record = json.loads(self._metadata[start:end])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GalleryIndexError(f"{damaged} ({error})") from None
        if not isinstance(record, dict) or not _RECORD_KEYS <= set(record):
            raise GalleryIndexError(f"{damaged} (it needs {sorted(_RECORD_KEYS)})")
        return record

    @cached_property
    def _columns(self) -> dict[str, list]:
        records = [self.record(row) for row in range(self.count)]
        return {key: [record[key] for record in records] for key in ("id", "path", "caption", "label", "size")}

    @property
    def ids(self) -> list[str]:
        """Image ids in row order (parsed from the metadata on first use)."""
        return self._columns["id"]

    @property
    def paths(self) -> list[str]:
        return self._columns["path"]

    @property
    def captions(self) -> list[str | None]:
        return self._columns["caption"]

    @property
    def labels(self) -> list[str | None]:
        return self._columns["label"]

    @property
    def sizes(self) -> list[list[int] | None]:
        """Original image (width, height) per row, for thumbnails; None when unknown."""
        return self._columns["size"]

    @cached_property
    def _row_of_id(self) -> dict[str, int]:
        return {image_id: row for row, image_id in enumerate(self.ids)}

    def row_of(self, image_id: str) -> int:
        """The row of a gallery image id (KeyError naming the id when absent)."""
        with self._lock:
            rows = self._row_of_id
        if image_id not in rows:
            raise KeyError(f"image id {image_id!r} is not in the gallery index {self.folder}")
        return rows[image_id]

    # ------------------------------------------------------------------ vectors and scores
    @property
    def has_vision_features(self) -> bool:
        """Whether the index stores each image's vision features (`store_vision_features`)."""
        return self._vision is not None

    def vision_features(self, row: int) -> np.ndarray | None:
        """(1, T, W) fp16 vision features of an image row as the build stored them; None without them."""
        if self._vision is None:
            return None
        if not 0 <= row < self.count:
            raise IndexError(f"image row must be in [0, {self.count}), got {row}")
        return self._vision[[row]]

    def vectors(self, rows: int | Iterable[int]) -> np.ndarray:
        """(n, Q, D) float32 stored vectors of the given image rows (one row: (1, Q, D))."""
        return torch.from_numpy(self._gather(rows)).float().numpy()

    def score_all(self, query) -> np.ndarray:
        """Exact scores of every image: (D,) -> (N,), (B, D) -> (B, N)."""
        queries, single = self._as_queries(query)
        scores = np.empty((queries.shape[0], self.count), dtype=np.float32)
        block = max(1, _SCORE_BLOCK_BYTES // (self.num_query_tokens * self.dim * 4))
        for start in range(0, self.count, block):
            vectors = self._store[start:start + block]  # (n, Q, D)
            scores[:, start:start + len(vectors)] = max_over_queries_numpy(vectors, queries)
        return scores[0] if single else scores

    def search(self, query, k: int = 10, exclude=None) -> list[SearchHit] | list[list[SearchHit]]:
        """The k best images per query: (D,) -> list of hits, (B, D) -> one list per query.

        `exclude`: image ids left out of the ranking (e.g. the reference image): one
        collection for every query, or for a batch a sequence of B collections. Ids not
        in the gallery are ignored. Fewer than k hits come back when the gallery is smaller.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries, single = self._as_queries(query)
        excluded_rows = self._excluded_rows(exclude, len(queries), single)
        results = []
        for vector, excluded in zip(queries, excluded_rows):
            if self.kind == "flat":
                rows, scores = self._search_flat(vector, k, excluded)
            else:
                rows, scores = self._search_approximate(vector, k, excluded)
            results.append([self._hit(int(row), float(score)) for row, score in zip(rows, scores)])
        return results[0] if single else results

    # ------------------------------------------------------------------ internals
    def _gather(self, rows) -> np.ndarray:
        """(n, Q, D) copy of the stored vectors (fp32 or fp16) of the given rows."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows.min() < 0 or rows.max() >= self.count):
            raise IndexError(f"image rows must be in [0, {self.count}), got {rows.min()}..{rows.max()}")
        return self._store[rows]

    def _as_queries(self, query) -> tuple[np.ndarray, bool]:
        if hasattr(query, "detach"):
            query = query.detach().float().cpu().numpy()
        array = np.asarray(query, dtype=np.float32)
        if array.ndim not in (1, 2) or array.shape[-1] != self.dim:
            raise ValueError(f"query must have shape ({self.dim},) or (B, {self.dim}), got {tuple(array.shape)}")
        return np.ascontiguousarray(array.reshape(-1, self.dim)), array.ndim == 1

    def _excluded_rows(self, exclude, batch: int, single: bool) -> list[set[int]]:
        if exclude is None:
            return [set() for _ in range(batch)]
        if isinstance(exclude, str):
            exclude = [exclude]
        exclude = list(exclude)
        per_query = (not single and len(exclude) == batch
                     and all(isinstance(entry, Collection) and not isinstance(entry, str) for entry in exclude))
        groups = exclude if per_query else [exclude] * batch
        with self._lock:
            row_of = self._row_of_id
        return [{row_of[image_id] for image_id in group if image_id in row_of} for group in groups]

    def _hit(self, row: int, score: float) -> SearchHit:
        record = self.record(row)
        return SearchHit(row=row, id=record["id"], score=score, path=record["path"],
                         caption=record["caption"], label=record["label"])

    def _rank(self, rows: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate rows; the k best by (score desc, row asc)."""
        rows = np.unique(rows)  # sorted: reads the store front to back
        scores = max_over_queries_numpy(self._gather(rows), query[None])[0]
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order]

    def _rank_exhaustive(self, query: np.ndarray, k: int, excluded: set[int]) -> tuple[np.ndarray, np.ndarray]:
        scores = self.score_all(query)
        rows = np.arange(self.count)
        if excluded:
            keep = np.ones(self.count, dtype=bool)
            keep[list(excluded)] = False
            rows, scores = rows[keep], scores[keep]
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order]

    def _search_flat(self, query: np.ndarray, k: int, excluded: set[int]) -> tuple[np.ndarray, np.ndarray]:
        total = self.count * self.num_query_tokens
        need = min(k, self.count - len(excluded))
        if need <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        fetch = max(64, 4 * (need + len(excluded)))
        while fetch <= _EXHAUSTIVE_SHARE * total:
            distances, labels = self._flat.search(query[None], fetch)
            images, best = _first_per_image(labels[0] // self.num_query_tokens, distances[0], excluded)
            # Faiss returns vectors by descending score, so an image's first vector is its best one.
            if len(images) >= need:
                threshold = best[need - 1] - TIE_MARGIN
                if distances[0][-1] < threshold:
                    return self._rank(images[best >= threshold], query, k)
            fetch *= 2
        return self._rank_exhaustive(query, k, excluded)

    def _search_approximate(self, query: np.ndarray, k: int, excluded: set[int]) -> tuple[np.ndarray, np.ndarray]:
        total = self.count * self.num_query_tokens
        wanted = max(self.params.candidates, k)
        if wanted + len(excluded) >= self.count:
            return self._rank_exhaustive(query, k, excluded)
        fetch = min(total, _FETCH_PER_CANDIDATE * (wanted + len(excluded)))
        while True:
            distances, labels = self._coarse.search(query[None], fetch, params=self._search_parameters(fetch))
            valid = labels[0] >= 0
            images, _ = _first_per_image(labels[0][valid] // self.num_query_tokens, distances[0][valid], excluded)
            exhausted = valid.sum() < fetch or fetch >= total
            if len(images) >= wanted or exhausted:
                return self._rank(images, query, k)
            fetch = min(total, fetch * 2)

    def _search_parameters(self, fetch: int):
        if self.kind == "ivfpq":
            return faiss.SearchParametersIVF(nprobe=self.params.nprobe)
        return faiss.SearchParametersHNSW(efSearch=max(self.params.ef_search, fetch))


def _first_per_image(images: np.ndarray, scores: np.ndarray, excluded: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct images in order of first appearance (and the score there), excluded rows removed."""
    distinct, first = np.unique(images, return_index=True)
    order = np.argsort(first)
    distinct, first = distinct[order], first[order]
    if excluded:
        keep = ~np.isin(distinct, list(excluded))
        distinct, first = distinct[keep], first[keep]
    return distinct, scores[first]


# ------------------------------------------------------------------------------------------- loading
_REQUIRED_INFO = ("format_version", "kind", "count", "num_query_tokens", "embed_dim", "params", "files")
_RECORD_KEYS = {"id", "path", "caption", "label", "size"}


def _read_info(folder: Path) -> dict[str, Any]:
    path = folder / INFO_FILE
    if not path.is_file():
        raise GalleryIndexError(f"{folder} is not a gallery index: {INFO_FILE} is missing "
                                "(an interrupted build leaves no index; build one with `cir build-index`)")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GalleryIndexError(f"index {folder} is damaged: cannot read {INFO_FILE} ({error})") from error
    missing = [key for key in _REQUIRED_INFO if not isinstance(info, dict) or key not in info]
    if missing:
        raise GalleryIndexError(f"index {folder} is damaged: {INFO_FILE} lacks {missing}")
    if info["format_version"] != FORMAT_VERSION:
        raise GalleryIndexError(f"index {folder} has format version {info['format_version']!r}; this code reads "
                                f"version {FORMAT_VERSION} (rebuild the index)")
    problem = _info_problem(info)
    if problem:
        raise GalleryIndexError(f"index {folder} is damaged: {INFO_FILE} {problem}")
    needed = {"flat": (FLAT_FILE, METADATA_FILE)}.get(info["kind"], (STORE_FILE, COARSE_FILE, METADATA_FILE))
    unlisted = [name for name in needed if name not in info["files"]]
    if unlisted:
        raise GalleryIndexError(f"index {folder} is damaged: {INFO_FILE} lists no checksum for {unlisted}")
    return info


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _info_problem(info: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a parsed info.json ("has kind 'x'", ...), or None."""
    if info["kind"] not in KINDS:
        return f"has kind {info['kind']!r}; expected one of {list(KINDS)}"
    for key in ("count", "num_query_tokens", "embed_dim"):
        if not _is_count(info[key]):
            return f"has {key} {info[key]!r}; expected a whole number >= 1"
    files = info["files"]
    if not isinstance(files, dict):
        return f"has files of type {type(files).__name__}; expected an object of file name -> checksum"
    for name, entry in files.items():
        if name not in INDEX_FILES or name == INFO_FILE:  # any other name (say "../x") is refused, not opened
            return f"lists an unknown file {name!r}"
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
                and not isinstance(entry["bytes"], bool) and entry["bytes"] >= 0):
            return f"has no sha256 and byte size for {name}: {entry!r:.100}"
    params = info["params"]
    fields = {field.name: field.type for field in dataclasses.fields(IndexParams)}
    if not isinstance(params, dict) or set(params) - set(fields):
        return f"has params {params!r:.200}; expected an object with some of {sorted(fields)}"
    for name, value in params.items():
        wanted = str if name == "kind" else int
        if not isinstance(value, wanted) or isinstance(value, bool):
            return f"has params.{name} {value!r:.50}; expected {'text' if wanted is str else 'a whole number'}"
    try:
        IndexParams(**params).validate()
    except ValueError as error:
        return f"has params that cannot be searched ({error})"
    if params.get("kind", info["kind"]) != info["kind"]:
        return f"has params.kind {params['kind']!r} for an index of kind {info['kind']!r}"
    build = info.get("build", {})
    try:
        BuildReport.from_dict(build)
    except (AttributeError, KeyError, TypeError, ValueError):
        return f"has a build report that is not one: {build!r:.100}"
    vision = info.get("vision_features")
    if vision is not None and not (isinstance(vision, dict) and isinstance(vision.get("shape"), list)
                                   and len(vision["shape"]) == 3 and all(map(_is_count, vision["shape"]))):
        return f"has vision_features {vision!r:.100}; expected an object with a shape [N, T, W]"
    return None


def _read_faiss(path: Path, flags: int):
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as error:  # faiss reports any malformed file this way, over several lines
        last_line = (str(error).strip().splitlines() or [""])[-1][:200]
        raise GalleryIndexError(f"index {path.parent} is damaged: {path.name} is not a readable faiss index "
                                f"({last_line})") from None


def _check_vision_shape(folder: Path, info: dict[str, Any], model) -> None:
    """Stored vision features must be the (T, W) tokens this model's Q-Former reads."""
    stored = info.get("vision_features")
    if stored is None:
        return
    vision = model.config.vision
    expected = [(vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size]
    if list(stored.get("shape", [])[1:]) != expected:
        raise GalleryIndexError(f"index {folder} stores vision features of shape (T, W) = "
                                f"{tuple(stored.get('shape', [])[1:])}, but model {model.config.name!r} reads "
                                f"{tuple(expected)}; rebuild the index with this model")


def _check_paths(index: GalleryIndex) -> None:
    """Every image path must lie inside the gallery folder the build recorded (indexes written
    without one: the folder their paths share, which must be more than the file system's root),
    so that an index edited to name other files cannot make an app open them."""
    folder, paths = index.folder, index.paths
    unusable = next((row for row, path in enumerate(paths) if not isinstance(path, str) or not path), None)
    if unusable is not None:
        raise GalleryIndexError(f"index {folder} is damaged: image {index.ids[unusable]!r} has path "
                                f"{paths[unusable]!r:.100}; expected a file path")
    # A relative path is opened from the working folder, so it is checked there.
    absolute = [path if os.path.isabs(path) else os.path.join(os.getcwd(), path) for path in paths]
    root = index.info.get("gallery_root")
    if root is None:
        root = os.path.commonpath([os.path.dirname(path) for path in absolute])
        if os.path.dirname(root) == root:
            raise GalleryIndexError(f"index {folder} records no gallery folder and its images share none: image "
                                    f"{index.ids[0]!r} is at {paths[0]!r:.200}, image {index.ids[-1]!r} at "
                                    f"{paths[-1]!r:.200}; rebuild it with cir build-index")
    elif not isinstance(root, str) or not os.path.isabs(root):
        raise GalleryIndexError(f"index {folder} is damaged: {INFO_FILE} has gallery_root {root!r:.100}; "
                                "expected an absolute folder")
    real_root = os.path.realpath(root)
    for row, path in enumerate(absolute):
        reason = outside_root(real_root, path, allow_absolute=True)
        if reason:
            raise GalleryIndexError(f"index {folder} names image {index.ids[row]!r} at {paths[row]!r:.200}, which "
                                    f"{reason}; an index serves only files inside its gallery folder {root}")


def _check_files(folder: Path, files: dict[str, dict[str, Any]], verify: bool) -> None:
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise GalleryIndexError(f"index {folder} is damaged: {name} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise GalleryIndexError(f"index {folder} is damaged: {name} has {size} bytes, "
                                    f"{INFO_FILE} records {entry['bytes']}")
        if verify and sha256_file(path) != entry["sha256"]:
            raise GalleryIndexError(f"index {folder} is damaged: {name} does not match its sha256 checksum "
                                    f"in {INFO_FILE} (rebuild the index)")


def _open_metadata(path: Path, count: int) -> tuple[mmap.mmap, np.ndarray]:
    """The metadata file memory-mapped, and the byte offset of each line (count + 1 entries)."""
    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    if len(newlines) != count:
        raise GalleryIndexError(f"index {path.parent} is damaged: {path.name} has {len(newlines)} lines "
                                f"for {count} images")
    return data, np.concatenate([[0], newlines + 1])
