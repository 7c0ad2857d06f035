"""Benchmark of the gallery index on synthetic SPRC-like vectors; `cir bench index` runs it.

    cir bench index --sizes 10000,100000
    nice -n 10 cir bench index --sizes 1000000 --kinds ivfpq   # minutes, ~18 GB of disk

Synthetic gallery: each image has `aspects` directions (drawn around shared cluster
centres, so images share neighbourhoods) and a global direction; each of its Q unit vectors
sits near one aspect plus the global direction. A query is a noisy copy of one aspect of a
random image, so the best vector of an image decides its score (as in SPRC, where the max
over Q matters and an image's mean vector is a poor stand-in).

For every gallery size the benchmark reports, per method, the build time, memory, single-
query p50/p95 latency and recall@10 against the exact ranking:

- naive: the official evaluation's way, one matmul over all N*Q vectors then max per image.
  When the fp32 matrix fits `naive_ram_bytes` it is held in RAM; otherwise it is streamed from
  the fp16 store of an approximate index (what the naive way costs when it does not fit).
- flat / ivfpq / hnsw: `GalleryIndex` of that kind. Each index is loaded and queried in a
  fresh process, whose peak resident memory is reported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from cir_core.index_store import STORE_FILE, IndexContents, IndexParams, write_index
from cir_core.scoring import max_over_queries, max_over_queries_numpy

logger = logging.getLogger(__name__)

CHUNK_IMAGES = 2048  # images generated per chunk (fixed, so a seed gives the same gallery at any size)
WARMUP_QUERIES = 3


@dataclass
class SyntheticGallery:
    """Random unit target vectors with cluster structure; chunk c depends only on (seed, c)."""

    count: int  # N images
    num_query_tokens: int = 32  # Q vectors per image
    dim: int = 256  # D
    aspects: int = 4  # directions per image; each of its vectors sits near one of them
    clusters: int = 0  # shared centres the aspects are drawn around; 0 = max(16, N // 100)
    seed: int = 0  # generator seed
    aspect_spread: float = 1.0  # noise of an aspect around its centre (relative to a unit vector)
    global_weight: float = 0.5  # weight of the image's global direction in each vector
    vector_spread: float = 0.6  # noise of a vector around its aspect
    query_spread: float = 1.0  # noise of a query around the aspect it was made from

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.count / CHUNK_IMAGES)

    def _centres(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0])
        return _unit(rng.standard_normal((self.clusters or max(16, self.count // 100), self.dim), dtype=np.float32))

    def _aspects(self, chunk: int, centres: np.ndarray) -> np.ndarray:
        """(n, A, D) aspect directions of the images of one chunk."""
        n = min(CHUNK_IMAGES, self.count - chunk * CHUNK_IMAGES)
        rng = np.random.default_rng([self.seed, 1, chunk])
        picks = rng.integers(0, len(centres), (n, self.aspects))
        noise = rng.standard_normal((n, self.aspects, self.dim), dtype=np.float32)
        return _unit(centres[picks] + noise * (self.aspect_spread / math.sqrt(self.dim)))

    def chunks(self) -> Iterator[np.ndarray]:
        """(n, Q, D) float32 unit vectors, CHUNK_IMAGES images at a time, in row order."""
        centres = self._centres()
        scale = self.vector_spread / math.sqrt(self.dim)
        for chunk in range(self.num_chunks):
            aspects = self._aspects(chunk, centres)
            n = len(aspects)
            rng = np.random.default_rng([self.seed, 2, chunk])
            which = rng.integers(0, self.aspects, (n, self.num_query_tokens))
            vectors = rng.standard_normal((n, self.num_query_tokens, self.dim), dtype=np.float32)
            vectors *= scale
            vectors += aspects[np.arange(n)[:, None], which]
            vectors += rng.standard_normal((n, 1, self.dim), dtype=np.float32) * (self.global_weight / math.sqrt(self.dim))
            yield _unit(vectors)

    def queries(self, count: int, seed: int = 1) -> np.ndarray:
        """(count, D) unit queries, each a noisy copy of one aspect of a random image."""
        rng = np.random.default_rng([self.seed, 3, seed])
        sources = rng.integers(0, self.count, count)
        centres = self._centres()
        queries = np.empty((count, self.dim), dtype=np.float32)
        for chunk in np.unique(sources // CHUNK_IMAGES):
            aspects = self._aspects(int(chunk), centres)
            for position in np.flatnonzero(sources // CHUNK_IMAGES == chunk):
                queries[position] = aspects[sources[position] % CHUNK_IMAGES, rng.integers(0, self.aspects)]
        queries += rng.standard_normal(queries.shape, dtype=np.float32) * (self.query_spread / math.sqrt(self.dim))
        return _unit(queries)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


@dataclass
class IndexBenchConfig:
    """What `run_index_benchmark` measures."""

    sizes: tuple[int, ...] = (10_000,)  # gallery sizes N
    kinds: tuple[str, ...] = ("flat", "ivfpq")  # index kinds (flat is skipped where it exceeds flat_ram_bytes)
    num_query_tokens: int = 32  # Q
    dim: int = 256  # D
    queries: int = 100  # timed queries per method (recall@k averages over them)
    naive_streamed_queries: int = 3  # timed queries of the naive way when it streams from disk (seconds each)
    k: int = 10  # recall@k
    params: IndexParams = field(default_factory=IndexParams)  # approximate-index parameters (kind is set per run)
    naive_ram_bytes: int = 8 << 30  # largest fp32 matrix the naive way may hold in RAM
    flat_ram_bytes: int = 8 << 30  # largest fp32 flat index built
    threads: int = 1  # torch and faiss threads while timing queries (one query per thread, as a server would)
    fresh_process: bool = True  # time queries in a new process (clean peak RSS) instead of this one (faster start)
    work_dir: Path | None = None  # where indexes are written (default: a temporary folder, removed after)
    seed: int = 0  # synthetic gallery seed


@dataclass
class BenchRow:
    """One method at one gallery size."""

    size: int  # N images
    method: str  # "naive", "naive (streamed fp16)", "flat", "ivfpq" or "hnsw"
    p50_ms: float  # median single-query wall-clock latency
    p95_ms: float  # 95th-percentile single-query wall-clock latency
    cpu_p50_ms: float  # median CPU time of the querying thread (the latency on an otherwise idle core)
    recall: float  # mean recall@k against the exact fp32 ranking
    speedup: float  # naive p50 / this p50
    build_s: float = 0.0  # seconds to build (vector generation excluded); 0 for naive
    data_bytes: int = 0  # index files on disk, or the matrix the naive way holds in RAM
    rss_peak_mb: float = 0.0  # peak resident memory of the process that loaded and queried the index (0: not measured)
    load_s: float = 0.0  # seconds to load the index (0 for naive)
    note: str = ""  # what was special about this run


class _ExactTopK:
    """Running exact top-k images of a fixed query set over streamed (n, Q, D) chunks."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = queries, k
        self.rows = np.zeros((len(queries), 0), dtype=np.int64)
        self.scores = np.zeros((len(queries), 0), dtype=np.float32)
        self.seen = 0

    def update(self, chunk: np.ndarray) -> None:
        n = len(chunk)
        scores = max_over_queries_numpy(chunk, self.queries)  # (B, n)
        rows = np.broadcast_to(np.arange(self.seen, self.seen + n), scores.shape)
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_rows = np.concatenate([self.rows, rows], axis=1)
        keep = np.argsort(-all_scores, axis=1, kind="stable")[:, :self.k]
        self.scores = np.take_along_axis(all_scores, keep, axis=1)
        self.rows = np.take_along_axis(all_rows, keep, axis=1)
        self.seen += n


class _TimedSource:
    """Iterates a chunk source, feeding the exact top-k, and counts the time spent producing chunks."""

    def __init__(self, chunks: Iterator[np.ndarray], truth: _ExactTopK | None):
        self.chunks, self.truth, self.seconds = chunks, truth, 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            started = time.perf_counter()
            chunk = next(self.chunks, None)
            if chunk is not None and self.truth is not None:
                self.truth.update(chunk)
            self.seconds += time.perf_counter() - started
            if chunk is None:
                return
            yield chunk


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    """Torch and faiss thread counts set for a block, restored after."""
    previous = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        faiss.omp_set_num_threads(previous[1])


def _time_queries(search, queries, warmup: int = WARMUP_QUERIES) -> dict[str, list]:
    """Per single query (after `warmup` untimed ones): wall seconds, CPU seconds of this thread, rows returned."""
    for query in queries[:warmup]:
        search(query)
    wall, cpu, found = [], [], []
    for query in queries:
        started, started_cpu = time.perf_counter(), time.thread_time()
        rows = np.asarray(search(query))
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started)
        found.append(rows.tolist())
    return {"wall": wall, "cpu": cpu, "found": found}


def _row(size: int, method: str, timed: dict[str, list], truth_rows: np.ndarray, **fields) -> BenchRow:
    """A BenchRow from `_time_queries` output (speedup is filled in once the naive row is known)."""
    wall_ms, cpu_ms = np.array(timed["wall"]) * 1e3, np.array(timed["cpu"]) * 1e3
    return BenchRow(size=size, method=method, p50_ms=float(np.percentile(wall_ms, 50)),
                    p95_ms=float(np.percentile(wall_ms, 95)), cpu_p50_ms=float(np.percentile(cpu_ms, 50)),
                    recall=_recall(np.array(timed["found"]), truth_rows[:len(timed["found"])]), speedup=1.0, **fields)


def _naive_top_k(matrix: torch.Tensor, query: torch.Tensor, q: int, k: int) -> np.ndarray:
    """One matmul over all (N*Q, D) vectors, max per image, then the k best rows (the official evaluation)."""
    scores = max_over_queries(query[None], matrix.view(-1, q, matrix.shape[1]))[0]
    return torch.topk(scores, k).indices.numpy()


def _naive_streamed_top_k(store: np.ndarray, query: torch.Tensor, k: int, block: int = 8192) -> np.ndarray:
    """The naive way over an (N, Q, D) fp16 array on disk, block by block."""
    scores = torch.empty(len(store))
    for start in range(0, len(store), block):
        vectors = torch.from_numpy(store[start:start + block]).float()  # (n, Q, D)
        scores[start:start + len(vectors)] = max_over_queries(query[None], vectors)[0]
    return torch.topk(scores, k).indices.numpy()


def _serve(index_dir: str, queries_path: str, k: int, threads: int) -> dict[str, Any]:
    """Load the index, time single queries, report this process's memory (run in a fresh process)."""
    from cir_core.index import GalleryIndex

    queries = np.load(queries_path)
    started = time.perf_counter()
    index = GalleryIndex.load(index_dir, verify=False)
    load_s = time.perf_counter() - started
    with _threads(threads):
        timed = _time_queries(lambda query: [hit.row for hit in index.search(query, k)], queries)
    return {"load_s": load_s, "timed": timed, "memory": _process_memory()}


def _process_memory() -> dict[str, float]:
    """Peak and current resident memory of this process in MB (Linux /proc; zeros elsewhere)."""
    fields = {"VmHWM": "peak_mb", "VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    memory = dict.fromkeys(fields.values(), 0.0)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                memory[fields[key]] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return memory


def _serve_in_fresh_process(index_dir: Path, queries_path: Path, k: int, threads: int) -> dict[str, Any]:
    result_path = index_dir.with_name(index_dir.name + "_served.json")
    # A fresh process, so that its peak resident memory is the index's alone.
    code = ("import json, sys; from cir_core.index_benchmark import _serve; "
            "json.dump(_serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])), open(sys.argv[5], 'w'))")
    subprocess.run([sys.executable, "-c", code, str(index_dir), str(queries_path),
                    str(k), str(threads), str(result_path)], check=True)
    return json.loads(result_path.read_text())


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def _bench_size(size: int, config: IndexBenchConfig, work: Path) -> list[BenchRow]:
    gallery = SyntheticGallery(size, config.num_query_tokens, config.dim, seed=config.seed)
    q, d, k = config.num_query_tokens, config.dim, config.k
    queries = gallery.queries(config.queries)
    queries_path = work / f"queries_{size}.npy"
    np.save(queries_path, queries)
    records = [{"id": f"img{row:08d}", "path": f"synthetic/{row}"} for row in range(size)]
    contents = IndexContents(records=records, num_query_tokens=q, dim=d,
                             info={"model": "synthetic", "fingerprint": "synthetic", "synthetic": dataclasses.asdict(gallery)})
    truth = _ExactTopK(queries, k)
    matrix_bytes = size * q * d * 4
    rows: list[BenchRow] = []
    naive: BenchRow | None = None
    matrix = None
    if matrix_bytes <= config.naive_ram_bytes:
        logger.info("N=%d: generating %d vectors for the naive baseline", size, size * q)
        matrix = np.empty((size * q, d), dtype=np.float32)
        start = 0
        for chunk in gallery.chunks():
            matrix[start:start + chunk.shape[0] * q] = chunk.reshape(-1, d)
            truth.update(chunk)
            start += chunk.shape[0] * q
        with _threads(config.threads):
            timed = _time_queries(lambda query: _naive_top_k(torch.from_numpy(matrix), query, q, k),
                                  torch.from_numpy(queries))
        naive = _row(size, "naive", timed, truth.rows, data_bytes=matrix_bytes, note="fp32 matrix held in RAM")
        rows.append(naive)
    kinds = [kind for kind in config.kinds if kind != "flat" or matrix_bytes <= config.flat_ram_bytes]
    if "flat" in config.kinds and "flat" not in kinds:
        logger.info("N=%d: skipping the flat index (needs %.1f GB of RAM)", size, matrix_bytes / 2**30)
    if naive is None and not any(kind != "flat" for kind in kinds):
        raise ValueError(f"N={size}: the vectors ({matrix_bytes / 2**30:.1f} GB) exceed naive_ram_bytes and no "
                         "approximate kind is benchmarked to stream them from; add ivfpq or hnsw")
    for kind in kinds:
        index_dir = work / f"{kind}_{size}"
        if matrix is not None:
            source = _TimedSource(iter(np.split(matrix.reshape(size, q, d), range(CHUNK_IMAGES, size, CHUNK_IMAGES))),
                                  None)
        else:
            source = _TimedSource(gallery.chunks(), truth if truth.seen == 0 else None)
        started = time.perf_counter()
        write_index(index_dir, source, contents, dataclasses.replace(config.params, kind=kind), progress=False)
        build_s = time.perf_counter() - started - source.seconds
        logger.info("N=%d: built %s in %.1fs; timing queries", size, kind, build_s)
        if config.fresh_process:
            served = _serve_in_fresh_process(index_dir, queries_path, k, config.threads)
        else:
            served = _serve(str(index_dir), str(queries_path), k, config.threads)
        memory = served["memory"]
        rows.append(_row(size, kind, served["timed"], truth.rows, build_s=build_s, data_bytes=_folder_bytes(index_dir),
                         rss_peak_mb=memory["peak_mb"], load_s=served["load_s"],
                         note=f"resident MB after the queries: {memory['rss_mb']:.0f} (anonymous "
                              f"{memory['anon_mb']:.0f}, file-backed {memory['file_mb']:.0f})"))
        if naive is None and kind != "flat":
            naive = _naive_streamed(size, index_dir, queries, truth, config)
            rows.insert(0, naive)
    for row in rows:
        row.speedup = naive.p50_ms / row.p50_ms if row.p50_ms > 0 else 0.0
    return rows


def _naive_streamed(size: int, index_dir: Path, queries: np.ndarray, truth: _ExactTopK,
                    config: IndexBenchConfig) -> BenchRow:
    logger.info("N=%d: timing the naive way streamed from %s", size, index_dir / STORE_FILE)
    store = np.load(index_dir / STORE_FILE, mmap_mode="c")  # copy-on-write: writable for torch, never written
    with _threads(config.threads):
        timed = _time_queries(lambda query: _naive_streamed_top_k(store, query, config.k),
                              torch.from_numpy(queries[:config.naive_streamed_queries]), warmup=0)
    return _row(size, "naive (streamed fp16)", timed, truth.rows, data_bytes=store.nbytes,
                note=f"fp32 matrix needs {size * config.num_query_tokens * config.dim * 4 / 2**30:.0f} GB; "
                     f"{len(timed['found'])} queries over the fp16 store on disk")


def run_index_benchmark(config: IndexBenchConfig) -> list[BenchRow]:
    """Measure every method at every size (see the module docstring)."""
    for kind in config.kinds:
        dataclasses.replace(config.params, kind=kind).validate()
    if config.queries < 1 or config.k < 1 or any(size <= config.k for size in config.sizes):
        raise ValueError("need at least one query and gallery sizes larger than k")
    owned = config.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="cir-bench-index-")) if owned else Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = []
        for size in config.sizes:
            rows += _bench_size(size, config, work)
        return rows
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def format_table(rows: list[BenchRow], k: int = 10) -> str:
    """A markdown table of benchmark rows."""
    lines = [f"| N | method | build s | data MB | peak RSS MB | load s | p50 ms | p95 ms | CPU p50 ms | recall@{k} "
             "| speedup vs naive (p50) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        rss = f"{row.rss_peak_mb:,.0f}" if row.rss_peak_mb else "-"
        lines.append(f"| {row.size:,} | {row.method} | {row.build_s:.1f} | {row.data_bytes / 2**20:,.0f} | {rss} | "
                     f"{row.load_s:.2f} | {row.p50_ms:.1f} | {row.p95_ms:.1f} | {row.cpu_p50_ms:.1f} | "
                     f"{row.recall:.3f} | {row.speedup:.1f}x |")
    return "\n".join(lines)

