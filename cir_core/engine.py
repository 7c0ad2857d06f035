"""Engine: the one object an app calls to search, compare and explain composed queries.

The engine loads a model and a gallery index once and only reads them afterwards, so
one engine serves concurrent requests from several threads. The mutable parts (the LRU
cache of gallery vision features, lazily computed vocabulary and benchmark ranks) are
guarded by locks.

Results are dataclasses: `RetrievalResult` (ranked `Hit`s, `StageTimings`, the
ground truth's `GroundTruth` rank, an optional `explain.Explanation`), `Comparison`
(three `MethodRanking`s) and `BenchmarkReport` (recall per query group and the
`FailureCase`s). Bad input raises `QueryError`, a ValueError whose message says what
is wrong. A labelled benchmark reaches the engine as a `data.sources.BenchmarkSource`
(any of shapes, CIRR, FashionIQ); the engine knows nothing else of benchmarks.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from threadpoolctl import threadpool_limits

from cir_core.caption_bank import CaptionBank, CaptionBankError
from cir_core.checkpoints import load_model, weights_fingerprint
from cir_core.device import describe_placement, place_model, resolve_device
from cir_core.config import QUERY_MODE_DESCRIPTIONS
from cir_core.explain import Explanation, RelevanceMap, Vocabulary, attention_maps, result_relevance
from cir_core.index import GalleryIndex, GalleryIndexError
from cir_core.data.sources import BenchmarkSource
from cir_core.evaluation.metrics import recall_at_k
from cir_core.index_build import GalleryItem, items_from_images
from cir_core.model import SPRCModel
from cir_core.precision import (
    check_gallery_precision,
    check_query_precision,
    has_large_vision_encoder,
    query_model,
    resolve_gallery_precision,
    resolve_query_precision,
)
from cir_core.text import TextBatch, clean_caption
from cir_core.transforms import MAX_IMAGE_PIXELS, ImageSizeError, ImageTransform, check_image_size, to_rgb

logger = logging.getLogger(__name__)

INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zs", "Zl", "Zp")  # control, format (zero-width spaces), separators
FAILURE_TOP = 3  # results kept per failure (what ranked above the target)
GROUP_RECALL_KS = (1, 5)  # recall reported per query group
DEFAULT_CACHE_ROOT = Path(os.environ.get("CIR_CACHE", "~/.cache/cir")).expanduser()


class QueryError(ValueError):
    """A query the engine cannot run; the message names the problem and what to do."""


# ---------------------------------------------------------------------- result types
@dataclass
class Hit:
    """One ranked gallery image."""

    rank: int  # 1-based position in the ranking
    id: str  # gallery image id
    score: float  # max over the image's Q target vectors of the dot product with the query
    path: str  # image file (the thumbnail shown for the hit)
    label: str  # caption or label stored with the gallery image ("" when none)


@dataclass
class StageTimings:
    """Wall-clock milliseconds of each stage of one query."""

    image_encode_ms: float  # reference through the vision encoder (cache lookup only for cached gallery images)
    prompt_ms: float  # sentence-level prompt pass (Q-Former over queries + caption, image cross-attention)
    compose_ms: float  # tokenisation and compose pass (prompt + caption, no image)
    search_ms: float  # index search, plus exact scoring when a ground truth is given
    explain_ms: float = 0.0  # explanations (nearest tokens, attention maps, relevance); 0 when off

    @property
    def total_ms(self) -> float:
        return self.image_encode_ms + self.prompt_ms + self.compose_ms + self.search_ms + self.explain_ms


@dataclass
class GroundTruth:
    """Where the known target of a query lands in the full ranking."""

    id: str  # gallery id of the target
    rank: int  # 1-based rank among all gallery images (excluded images not counted); ties count against it
    score: float  # its score for the query
    in_top_k: bool  # whether it is among the returned hits


@dataclass
class RetrievalResult:
    """The answer to one composed query."""

    caption: str  # relative caption as given
    reference_id: str | None  # gallery id of the reference when it came from the gallery
    hits: list[Hit]  # best first, at most k
    timings: StageTimings  # per-stage latency
    query_vector: np.ndarray  # (D,) composed query, L2-normalised (for relevance maps of any hit)
    notes: list[str] = field(default_factory=list)  # non-fatal remarks on the input (truncation, unknown words)
    ground_truth: GroundTruth | None = None  # set when a ground-truth id was given
    explanation: Explanation | None = None  # set when explanations were asked for

    def to_json(self) -> dict:
        """Plain-JSON summary: ranked ids and scores, ground truth, notes, timings."""
        return {
            "caption": self.caption,
            "reference_id": self.reference_id,
            "results": [{"rank": h.rank, "id": h.id, "score": round(h.score, 6), "label": h.label} for h in self.hits],
            "ground_truth": None if self.ground_truth is None else {
                "id": self.ground_truth.id, "rank": self.ground_truth.rank,
                "score": round(self.ground_truth.score, 6), "in_top_k": self.ground_truth.in_top_k},
            "notes": list(self.notes),
            "timings_ms": {"image_encode": round(self.timings.image_encode_ms, 2),
                           "prompt": round(self.timings.prompt_ms, 2),
                           "compose": round(self.timings.compose_ms, 2),
                           "search": round(self.timings.search_ms, 2),
                           "explain": round(self.timings.explain_ms, 2),
                           "total": round(self.timings.total_ms, 2)},
        }


@dataclass
class MethodRanking:
    """The ranking of one retrieval method in a comparison."""

    name: str  # short name: "sprc", "text-only" or "image-only"
    description: str  # what the method's query vector is
    hits: list[Hit]  # best first
    ground_truth: GroundTruth | None = None  # set when a ground-truth id was given


@dataclass
class Comparison:
    """Text-only, image-only and SPRC rankings of the same query, side by side."""

    caption: str  # relative caption as given
    reference_id: str | None  # gallery id of the reference when it came from the gallery
    rankings: list[MethodRanking]  # in the order text-only, image-only, sprc
    notes: list[str] = field(default_factory=list)  # remarks on the input


@dataclass
class BenchmarkQuery:
    """One benchmark triplet whose images are in the engine's gallery."""

    pairid: str  # query id within its split
    reference_id: str  # gallery id of the reference image
    target_id: str  # gallery id of the target image
    caption: str  # relative caption
    groups: tuple[str, ...]  # query groups (edit type, category, caption keyword groups); may be empty


@dataclass
class FailureCase:
    """A benchmark query whose target is not ranked first."""

    query: BenchmarkQuery  # the triplet
    rank: int  # 1-based rank of the target (reference excluded where the protocol excludes it)
    target_score: float  # the target's score
    top_ids: list[str]  # gallery ids ranked first, second, third (up to FAILURE_TOP)
    top_scores: list[float]  # their scores

    @property
    def top_id(self) -> str:
        return self.top_ids[0]

    def to_json(self) -> dict:
        return {"pairid": self.query.pairid, "caption": self.query.caption, "groups": list(self.query.groups),
                "target_rank": self.rank, "reference": self.query.reference_id, "target": self.query.target_id,
                "target_score": round(self.target_score, 6), "top": self.top_ids}


@dataclass
class GroupRecall:
    """Recall of the benchmark queries of one group."""

    queries: int  # queries in the group
    recall: dict[str, float]  # "R@1", "R@5": percent of queries with the target within the top k

    def to_json(self) -> dict:
        return {"queries": self.queries, **{name: round(value, 2) for name, value in self.recall.items()}}


@dataclass
class BenchmarkReport:
    """Recall per group over a benchmark split's queries, and the failures matching a filter."""

    split: str  # e.g. "cirr/val"
    queries: int  # queries ranked (those whose reference and target are in the gallery)
    groups: dict[str, GroupRecall]  # "all" first, then each group in the source's order
    failures: list[FailureCase]  # targets not ranked first, filtered by group and keyword; view angle first

    def to_json(self) -> dict:
        return {"split": self.split, "queries": self.queries,
                "groups": {name: group.to_json() for name, group in self.groups.items()},
                "failures": [case.to_json() for case in self.failures]}


@dataclass
class CaptionCheck:
    """A validated caption, tokenised for the model."""

    text: TextBatch  # (1, L) tokens
    notes: list[str]  # remarks for the user (truncation, unknown words)


# ---------------------------------------------------------------------- input validation
def load_query_image(source, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A PIL image, numpy array, image file or encoded image bytes -> RGB image; QueryError if unusable.

    The pixel count is checked from the header before any pixel is decoded, so a forged
    20000x20000 header is refused at once without allocating it.
    """
    if isinstance(source, np.ndarray):
        try:
            source = Image.fromarray(source)
        except (TypeError, ValueError) as error:
            raise QueryError(f"the array cannot be read as an image ({error})") from error
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels)
        return to_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        name, opened = "the uploaded image", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise QueryError(f"image file {path} does not exist")
        name, opened = path.name, path
    try:
        with Image.open(opened) as image:
            _check_pixels(image.size, max_pixels)
            image.load()
            return to_rgb(image)
    except QueryError:
        raise
    except Image.DecompressionBombError as error:
        raise QueryError(f"{name}: the image is too large to process ({error})") from error
    except UnidentifiedImageError as error:
        raise QueryError(f"{name} is not an image file (or a format Pillow cannot read)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise QueryError(f"{name}: the image file is corrupt or truncated ({error})") from error


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    try:
        check_image_size(*size, max_pixels)
    except ImageSizeError as error:
        raise QueryError(str(error)) from None


def check_caption(model: SPRCModel, caption) -> CaptionCheck:
    """Refuse empty, wordless or unknown-word captions; note truncation and unknown words."""
    if not isinstance(caption, str):
        raise QueryError(f"the caption must be text, got {type(caption).__name__}")
    if not "".join(ch for ch in caption if unicodedata.category(ch) not in INVISIBLE_CATEGORIES).strip():
        raise QueryError("the caption is empty: describe how the target differs from the reference")
    preprocess = model.config.preprocess
    words = caption.split()
    cleaned = clean_caption(caption, preprocess.max_caption_words)
    if not cleaned:
        raise QueryError("the caption has no words once punctuation is removed")
    text = model.tokenize(caption)
    tokenizer = model.tokenizer
    ids = text.input_ids[0].tolist()
    content = [i for i in ids if i not in tokenizer.all_special_ids or i == tokenizer.unk_token_id]
    unknown = sum(1 for i in content if i == tokenizer.unk_token_id)
    if not content:  # e.g. only characters the tokenizer drops
        raise QueryError("the caption has no words the model can read")
    if unknown == len(content):
        raise QueryError("the model knows none of the caption's words (emoji and symbols read as unknown); "
                         "use words, e.g. 'make the circle red'")
    notes = []
    pieces = len(tokenizer(cleaned)["input_ids"])  # of the words kept after cleaning, [CLS] and [SEP] included
    if len(words) > preprocess.max_caption_words or pieces > preprocess.max_caption_tokens:
        notes.append(f"the caption ({len(words)} words) was truncated: the model reads at most "
                     f"{preprocess.max_caption_words} words and {preprocess.max_caption_tokens - 2} word pieces")
    if unknown:
        notes.append(f"{unknown} word piece(s) are unknown to the model and read as [UNK]")
    return CaptionCheck(text=text, notes=notes)


# ---------------------------------------------------------------------- the engine
def limit_threads(count: int = 1) -> None:
    """Cap torch, faiss and BLAS/OpenMP threads of this process (a process-wide setting).

    A server gets its parallelism from concurrent requests; threads inside each request
    oversubscribe a small CPU, worst when it is shared. Measured on 2 busy cores: a tiny
    query 10 ms with one torch thread vs 1.6 s with two; shapes-mini gallery encoding 112
    vs 15 images/s; one exact scoring of 5270 images 16 vs 38 ms.
    torch and faiss share one OpenMP runtime here, so they cannot be set apart.
    """
    count = max(1, int(count))
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    threadpool_limits(limits=count)


class Engine:
    """A loaded model and gallery index; every method is safe to call from several threads."""

    def __init__(self, model: SPRCModel, index: GalleryIndex, source: BenchmarkSource | None = None,
                 feature_cache_size: int = 256, num_threads: int = 1, cache_dir: str | Path | None = None,
                 query_precision: str = "auto"):
        """`index` was built with `model`; `source`, a labelled benchmark split, provides the queries
        for examples, ground truth and failure inspection (None: a plain gallery).

        `cache_dir` keeps what the engine computes once across restarts: the benchmark
        queries' ranks (ranking every query takes tens of seconds on a CPU) and the caption
        bank of the nearest-caption view; None keeps them in memory only.
        `num_threads` is the process's torch/faiss thread count (one per request suits a
        server with concurrent users).
        `query_precision` "bf16" or "int8" runs searches without explanations (the uploaded
        reference's vision encoder and both Q-Former passes) on a reduced-precision copy of
        the model (`cir_core.precision`): faster on a CPU, with query vectors close to
        fp32's, so rankings can differ from fp32 where scores nearly tie. Explanations
        always use the fp32 model. "auto" is int8 for a large vision encoder on a CPU (ViT-g),
        else the model itself (`cir_core.precision.resolve_query_precision`).
        """
        check_query_precision(query_precision)
        limit_threads(num_threads)
        self.model = model.eval()
        self.index = index
        self.source = source
        self.transform = ImageTransform(model.config.preprocess)
        self._row_of = {image_id: row for row, image_id in enumerate(index.ids)}
        self._feature_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._feature_cache_size = feature_cache_size
        self._lock = threading.Lock()
        self.cache_hits = 0  # gallery references served from the feature cache
        self.cache_misses = 0  # gallery references that went through the vision encoder
        self._vocabulary: Vocabulary | None = None
        self._auxiliary_tokens = None
        self._benchmark: list[BenchmarkQuery] | None = None
        self._ranks: list[FailureCase] | None = None  # every benchmark query's rank, failures or not
        self._ranks_lock = threading.Lock()
        self._caption_bank: CaptionBank | None = None
        self._caption_bank_lock = threading.Lock()
        self._caption_bank_thread: threading.Thread | None = None
        self._dataset_vocabulary: Vocabulary | None = None
        self._answered = False  # whether a search has answered yet (see after_first_answer)
        self._after_first_answer: list = []
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.query_precision = resolve_query_precision(model, query_precision)
        self._query_model = query_model(model, self.query_precision)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_uris(cls, model_uri: str, index_dir: str | Path | None = None, gallery_data: str | Path | None = None,
                  source: BenchmarkSource | None = None, cache_root: str | Path | None = None, progress: bool = True,
                  num_threads: int = 1, gallery_precision: str = "auto", device: str = "auto",
                  index_seed: str | Path | None = None, **kwargs) -> Engine:
        """Load a model from a URI and its gallery index.

        With `index_dir`, that index is loaded (refused if another model built it).
        Without, the gallery of `source` (a labelled benchmark split), else every image
        under `gallery_data` (a plain folder), is indexed once and cached under
        `cache_root` (default ~/.cache/cir, or $CIR_CACHE), keyed by the model's weights
        fingerprint, the gallery and `gallery_precision` (how its images are encoded).
        `source` also provides the benchmark queries (examples, ground truth, failures).
        `index_seed` (`cir_core.index_seed`): shipped vectors of the gallery that stand for
        encoding it, when they come from this model's weights (else the gallery is encoded).
        `device` is "auto" (CUDA when available), "cpu" or "cuda" (refused without CUDA); on
        CUDA the model runs in fp16 (`cir_core.device.place_model`).
        """
        check_gallery_precision(gallery_precision)
        device = resolve_device(device)  # refuses cuda without CUDA before the (slow) model load
        if index_dir is None and source is None and gallery_data is None:
            raise ValueError("no gallery: give an index folder, a benchmark source or a folder of images")
        limit_threads(num_threads)  # the gallery build below too
        model = place_model(load_model(model_uri), device)
        cache_root = Path(cache_root) if cache_root is not None else DEFAULT_CACHE_ROOT
        if index_dir is not None:
            index = GalleryIndex.load(index_dir, model=model)
        elif source is not None:
            name = f"{source.name.replace('/', '-')}-{source.cache_key()}"
            index = default_gallery_index(model, source.gallery_items(), name, cache_root, progress, gallery_precision,
                                          seed=index_seed)
        else:
            folder = Path(gallery_data).expanduser().resolve()
            index = default_gallery_index(model, items_from_images(folder), folder.name, cache_root, progress,
                                          gallery_precision)
        logger.info("engine ready: model %s, %d gallery images", model.config.name, len(index.ids))
        kwargs.setdefault("cache_dir", cache_root / "failures")
        return cls(model, index, source=source, num_threads=num_threads, **kwargs)

    # ------------------------------------------------------------------ public API
    @property
    def gallery_ids(self) -> list[str]:
        return list(self.index.ids)

    def summary(self) -> str:
        """One line for people: the model, where it runs, the gallery and the precision each side is encoded in."""
        precision = self.index.info.get("precision")  # absent from indexes built before it was recorded
        details = [f"encoded in {precision}"] if precision else []
        if self.index.has_vision_features:
            details.append("vision features stored")
        encoded = f" ({', '.join(details)})" if details else ""
        return (f"Model {self.model.config.name} {describe_placement(self.model)}, gallery of "
                f"{len(self.index.ids)} images{encoded}, queries encoded in {self.query_precision}")

    def gallery_path(self, image_id: str) -> str:
        return str(self.index.paths[self._row(image_id)])

    def gallery_label(self, image_id: str) -> str:
        """The caption that describes a gallery image, else its label ("" when it has neither)."""
        row = self._row(image_id)
        return self.index.captions[row] or self.index.labels[row] or ""

    def file_roots(self) -> list[str]:
        """Folders holding the gallery's images (an app must be allowed to serve them)."""
        return sorted({str(Path(path).parent) for path in self.index.paths})

    def search(self, image, caption: str, k: int = 10, explain: bool = False, exclude_reference: bool = True,
               ground_truth_id: str | None = None) -> RetrievalResult:
        """Rank the gallery for (reference image, caption).

        `image` is a PIL image, a numpy array, an image file, encoded image bytes or a
        gallery id (a string naming a gallery image is taken as its id, whose cached vision
        features are reused).
        The reference is left out of its own ranking when it is a gallery image and
        `exclude_reference` is set. With `ground_truth_id`, that image's exact rank and score
        come back even when it is outside the top k; with `explain`, the explanation.
        """
        k = self._check_k(k)
        if ground_truth_id is not None:
            self._row(ground_truth_id)
        tokenize_started = time.perf_counter()
        caption_check = check_caption(self.model, caption)  # before the image: bad captions fail fast
        started = time.perf_counter()
        tokenize_ms = 1000 * (started - tokenize_started)
        sprc = self.model.config.query_mode == "sprc"
        if explain and not sprc:
            raise QueryError(f"explanations need a sentence-level prompt; this model's query mode is "
                             f"{self.model.config.query_mode!r} (search without explanations)")
        model = self.model if explain else self._query_model
        reference_id, features, reference_image = self._reference(image, keep_image=explain, model=model)
        encoded = time.perf_counter()
        features = features.to(model.query_tokens.dtype)
        with torch.inference_mode():
            if sprc:
                prompt, attentions = (model.sentence_prompt(features, caption_check.text, output_attentions=True)
                                      if explain else (model.sentence_prompt(features, caption_check.text), None))
                prompted = time.perf_counter()
                query = model.compose(prompt, caption_check.text)[0].float()  # (D,)
            else:  # a baseline checkpoint: its own query, no prompt stage
                prompt, attentions, prompted = None, None, time.perf_counter()
                query = model.compose_query(features, caption_check.text).query[0].float()
        composed = time.perf_counter()
        excluded = [reference_id] if exclude_reference and reference_id is not None else []
        hits = self._search(query, k, excluded)
        truth = self._ground_truth(query, ground_truth_id, excluded, hits) if ground_truth_id is not None else None
        searched = time.perf_counter()
        explanation = None
        if explain:
            explanation = self._explain(prompt[0], attentions, reference_image, query, hits[0].id if hits else None)
        timings = StageTimings(image_encode_ms=1000 * (encoded - started), prompt_ms=1000 * (prompted - encoded),
                               compose_ms=tokenize_ms + 1000 * (composed - prompted),
                               search_ms=1000 * (searched - composed),
                               explain_ms=1000 * (time.perf_counter() - searched) if explain else 0.0)
        result = RetrievalResult(caption=caption, reference_id=reference_id, hits=hits, timings=timings,
                                 query_vector=query.float().cpu().numpy(), notes=caption_check.notes,
                                 ground_truth=truth, explanation=explanation)
        if not self._answered:
            self._first_answer_given()
        return result

    def relevance(self, query_vector: np.ndarray, result_id: str) -> RelevanceMap:
        """Gradient-weighted attention over a gallery image's patches for its score under a query."""
        query = torch.as_tensor(np.asarray(query_vector), dtype=torch.float32)
        if query.shape != (self.model.config.embed_dim,):
            raise QueryError(f"a query vector has shape ({self.model.config.embed_dim},), got {tuple(query.shape)}")
        return result_relevance(self.model, query, self._gallery_features(result_id)[0])

    def compare(self, image, caption: str, k: int = 10, exclude_reference: bool = True,
                ground_truth_id: str | None = None) -> Comparison:
        """Text-only, image-only and SPRC rankings of one query.

        - text-only: the model's auxiliary-prompt query (learned prompt P' + caption, no
          image), SPRC's own caption-only query, trained against the same targets;
        - image-only: the mean of the reference's own Q target vectors, renormalised,
          scored like any query (max over each gallery image's Q vectors): "more like this";
        - the model's composed query (named by its query mode, "sprc" for SPRC checkpoints).
        """
        k = self._check_k(k)
        if ground_truth_id is not None:
            self._row(ground_truth_id)
        caption_check = check_caption(self.model, caption)
        reference_id, features, _ = self._reference(image, keep_image=False)
        with torch.inference_mode():
            text_query = self.model.auxiliary_query(caption_check.text)[0]
            image_query = F.normalize(self.model.target_vectors(features)[0].mean(dim=0), dim=-1)
            composed_query = self.model.compose_query(features, caption_check.text).query[0]
        excluded = [reference_id] if exclude_reference and reference_id is not None else []
        methods = [
            ("text-only", "auxiliary-prompt query: learned prompt P' + caption, no image", text_query),
            ("image-only", "mean of the reference's own target vectors", image_query),
            (self.model.config.query_mode, QUERY_MODE_DESCRIPTIONS[self.model.config.query_mode], composed_query),
        ]
        rankings = []
        for name, description, query in methods:
            hits = self._search(query, k, excluded)
            truth = self._ground_truth(query, ground_truth_id, excluded, hits) if ground_truth_id else None
            rankings.append(MethodRanking(name=name, description=description, hits=hits, ground_truth=truth))
        return Comparison(caption=caption, reference_id=reference_id, rankings=rankings, notes=caption_check.notes)

    def benchmark_queries(self) -> list[BenchmarkQuery]:
        """The source's queries whose reference and target are in the gallery (read once; [] without a source)."""
        with self._lock:
            if self._benchmark is not None:
                return self._benchmark
        queries = []
        if self.source is not None:
            queries = [BenchmarkQuery(pairid=str(t.pairid), reference_id=t.reference, target_id=t.target,
                                      caption=t.caption, groups=tuple(self.source.groups(t)))
                       for t in self.source.queries if t.target in self._row_of and t.reference in self._row_of]
        with self._lock:
            self._benchmark = queries
        return queries

    def group_names(self) -> list[str]:
        """The query groups of the source, view-angle groups first ([] without a source)."""
        return self.source.group_names() if self.source is not None else []

    def failure_cases(self, group: str | None = None, keyword: str | None = None) -> list[FailureCase]:
        """Benchmark queries whose target is not first, in `group` and with `keyword` in the caption
        (None or "" = any): view-angle groups first, then worst rank first."""
        keyword = (keyword or "").strip().lower()
        first = {name: position for position, name in enumerate(self.source.first_groups if self.source else ())}
        cases = [case for case in self._benchmark_ranks() if case.rank > 1
                 and (not group or group in case.query.groups) and keyword in case.query.caption.lower()]
        return sorted(cases, key=lambda case: (min((first.get(g, len(first)) for g in case.query.groups),
                                                   default=len(first)), -case.rank))

    def benchmark_report(self, group: str | None = None, keyword: str | None = None) -> BenchmarkReport:
        """Recall@1/5 of all benchmark queries and of each group, and the failures of `group` / `keyword`."""
        if self.source is None:
            raise QueryError("this gallery has no benchmark: start the app with --dataset to inspect failures")
        if group and group not in self.group_names():
            raise QueryError(f"unknown group {group!r}; this benchmark has {', '.join(self.group_names()) or 'none'}")
        ranked = self._benchmark_ranks()
        groups = {"all": self._group_recall(ranked)}
        for name in self.group_names():
            groups[name] = self._group_recall([case for case in ranked if name in case.query.groups])
        return BenchmarkReport(split=self.source.name, queries=len(ranked), groups=groups,
                               failures=self.failure_cases(group, keyword))

    def after_first_answer(self, work) -> None:
        """Run `work()` once the first search has answered (at once if one already has).

        Start-up work that no search needs (ranking the benchmark, encoding the caption
        bank) waits for it, so that it never delays a fresh app's first answer.
        """
        with self._lock:
            if not self._answered:
                self._after_first_answer.append(work)
                return
        work()

    def _first_answer_given(self) -> None:
        with self._lock:
            if self._answered:
                return
            self._answered, pending, self._after_first_answer = True, self._after_first_answer, []
        for work in pending:
            try:
                work()
            except Exception:  # background preparations must never fail the answer that triggered them
                logger.exception("work waiting for the first answer failed")

    def caption_texts(self) -> tuple[list[str], list[str | None]]:
        """The texts of the caption bank: the benchmark's (`BenchmarkSource.caption_texts`), else the
        gallery's own captions; ([], []) when there are none."""
        if self.source is not None:
            return self.source.caption_texts()
        described = [(caption, image_id) for caption, image_id in zip(self.index.captions, self.index.ids) if caption]
        return [caption for caption, _ in described], [image_id for _, image_id in described]

    def caption_bank(self) -> CaptionBank | None:
        """The caption bank of this model and gallery: loaded from the cache, else encoded once (and
        cached); None when there are no texts. A cached bank of another model is rebuilt, with a log line."""
        with self._caption_bank_lock:  # held while building: a second caller waits instead of encoding again
            if self._caption_bank is None:
                texts, image_ids = self.caption_texts()
                if not texts:
                    return None
                key = hashlib.sha256(json.dumps([texts, image_ids]).encode()).hexdigest()[:16]
                folder = (self.cache_dir / "caption-banks" / f"{self.model.config.name}-{key}"
                          if self.cache_dir is not None else None)
                bank = None
                if folder is not None and folder.is_dir():
                    try:
                        bank = CaptionBank.load(folder, model=self.model, key=key)
                    except CaptionBankError as error:
                        logger.warning("encoding the caption bank again: %s", error)
                if bank is None:
                    logger.info("encoding a caption bank of %d texts (once)", len(texts))
                    bank = CaptionBank.build(self.model, texts, image_ids, key=key, progress=False)
                    if folder is not None:
                        try:
                            bank.save(folder)
                        except OSError as error:
                            logger.warning("could not cache the caption bank in %s: %s", folder, error)
                self._caption_bank = bank
            return self._caption_bank

    def prepare_caption_bank(self) -> threading.Thread:
        """Load or encode the caption bank in a background thread (once; later calls return that thread)."""
        with self._lock:
            if self._caption_bank_thread is None:
                def work():
                    try:
                        self.caption_bank()
                        self._benchmark_vocabulary()
                    except Exception:  # never take the server down; explanations say the captions are missing
                        logger.exception("building the caption bank failed")

                self._caption_bank_thread = threading.Thread(target=work, name="caption-bank", daemon=True)
                self._caption_bank_thread.start()
            return self._caption_bank_thread

    def prepare_failures(self) -> threading.Thread:
        """Rank the benchmark queries (or read their ranks from the cache) in a background thread,
        so that the first look at the failure-inspection view does not wait for it."""
        def work():
            try:
                self._benchmark_ranks()
            except Exception:  # never take the server down; the view reports the error when opened
                logger.exception("ranking the benchmark queries failed")

        thread = threading.Thread(target=work, name="prepare-failures", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ internals
    def _row(self, image_id: str) -> int:
        try:
            return self._row_of[image_id]
        except KeyError:
            raise QueryError(f"{image_id!r} is not an image of the gallery") from None

    def _check_k(self, k) -> int:
        if isinstance(k, str):
            try:
                k = float(k.strip())
            except ValueError:
                raise QueryError(f"k must be a whole number, got {k!r}") from None
        whole = isinstance(k, (int, float, np.integer, np.floating)) and not isinstance(k, bool)
        if not whole or not math.isfinite(k) or int(k) != k:  # 1.5 is not silently 1
            raise QueryError(f"k must be a whole number, got {k!r}")
        k = int(k)
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        return min(k, len(self._row_of))

    def _reference(self, image, keep_image: bool, model: SPRCModel | None = None
                   ) -> tuple[str | None, torch.Tensor, Image.Image | None]:
        """(gallery id or None, vision features (1, T, W), the RGB image when asked for).

        An uploaded image goes through `model`'s vision encoder (default: the fp32 model);
        gallery images come from the index's stored vision features when it has them, else
        from the feature cache, filled by the fp32 model.
        """
        if image is None:
            raise QueryError("no reference image: upload one or pick one from the gallery")
        if isinstance(image, str) and image in self._row_of:
            rgb = load_query_image(self.gallery_path(image)) if keep_image else None
            return image, self._gallery_features(image), rgb
        if isinstance(image, (str, Path)) and not Path(image).is_file():
            raise QueryError(f"{str(image)!r} is neither a gallery image id nor an existing image file")
        rgb = load_query_image(image)
        model = model if model is not None else self.model
        with torch.inference_mode():
            pixels = self.transform(rgb).unsqueeze(0).to(model.query_tokens.dtype)
            features = model.vision_features(pixels)
        return None, features, rgb if keep_image else None

    def _gallery_features(self, image_id: str, remember: bool = True) -> torch.Tensor:
        """(1, T, W) vision features of a gallery image: stored in the index, else from the LRU cache when possible.

        `remember=False` (ranking a whole benchmark) leaves the cache to the users' queries.
        """
        row = self._row(image_id)
        stored = self.index.vision_features(row)  # (1, T, W) fp16 or None
        if stored is not None:  # a read from disk (under a millisecond), so not worth the cache's memory
            return torch.from_numpy(stored).to(self.model.device, dtype=self.model.query_tokens.dtype)
        with self._lock:
            features = self._feature_cache.get(image_id)
            if features is not None:
                self._feature_cache.move_to_end(image_id)
                self.cache_hits += 1
                return features
            self.cache_misses += 1
        with torch.inference_mode():
            pixels = self.transform(load_query_image(self.gallery_path(image_id))).unsqueeze(0)
            features = self.model.vision_features(pixels)
        if not remember:
            return features
        with self._lock:
            self._feature_cache[image_id] = features
            while len(self._feature_cache) > self._feature_cache_size:
                self._feature_cache.popitem(last=False)
        return features

    def _search(self, query: torch.Tensor, k: int, excluded: list[str]) -> list[Hit]:
        found = self.index.search(query, k, exclude=excluded)
        return [Hit(rank=position + 1, id=hit.id, score=float(hit.score), path=str(hit.path),
                    label=hit.caption or hit.label or "") for position, hit in enumerate(found)]

    def _ground_truth(self, query: torch.Tensor, truth_id: str, excluded: list[str], hits: list[Hit]) -> GroundTruth:
        scores = torch.as_tensor(self.index.score_all(query), dtype=torch.float32).clone()  # (N,)
        for image_id in excluded:
            scores[self._row(image_id)] = float("-inf")
        truth_score = scores[self._row(truth_id)]
        rank = int((scores >= truth_score).sum())
        return GroundTruth(id=truth_id, rank=rank, score=float(truth_score),
                           in_top_k=any(hit.id == truth_id for hit in hits))

    def _explain(self, prompt: torch.Tensor, attentions, reference: Image.Image, query: torch.Tensor,
                 top_id: str | None) -> Explanation:
        vocabulary, auxiliary_tokens = self._vocabulary_and_auxiliary()
        relevance = self.relevance(query.float().cpu().numpy(), top_id) if top_id is not None else None
        explanation = Explanation(prompt_tokens=vocabulary.nearest(prompt), auxiliary_tokens=auxiliary_tokens,
                                  attention=attention_maps(attentions), reference=reference,
                                  relevance=relevance, relevance_id=top_id)
        thread = self.prepare_caption_bank()  # the bank and the benchmark's vocabulary, first used here
        if self._dataset_vocabulary is not None:
            explanation.prompt_dataset_tokens = self._dataset_vocabulary.nearest(prompt)
        if thread.is_alive():
            explanation.captions_note = "the caption bank is being encoded (once); search again in a moment"
        elif self._caption_bank is None:
            explanation.captions_note = "this gallery has no captions to compare with"
        else:
            with torch.inference_mode():
                prompt_vector = self.model.prompt_vectors(prompt.unsqueeze(0).to(self.model.query_tokens.dtype))
            explanation.query_captions = self._caption_bank.nearest(query.float().cpu()[None])[0]
            explanation.prompt_captions = self._caption_bank.nearest(prompt_vector.float().cpu())[0]
        return explanation

    def _benchmark_vocabulary(self) -> Vocabulary | None:
        """The model's tokens that occur in the benchmark's captions (None without a source)."""
        if self.source is None:
            return None
        with self._lock:
            if self._dataset_vocabulary is None:
                texts = [t.caption for t in self.source.split.triplets] + self.source.caption_texts()[0]
                words = {token for text in texts for token in self.model.tokenizer.tokenize(text)}
                self._dataset_vocabulary = Vocabulary(self.model, restrict_to=words)
            return self._dataset_vocabulary

    def _vocabulary_and_auxiliary(self):
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self.model)
                self._auxiliary_tokens = self._vocabulary.nearest(self.model.prompt_tokens[0])
            return self._vocabulary, self._auxiliary_tokens

    @staticmethod
    def _group_recall(cases: list[FailureCase]) -> GroupRecall:
        ranks = torch.tensor([case.rank - 1 for case in cases], dtype=torch.long)  # 0-based, as recall_at_k counts
        recall = recall_at_k(ranks, GROUP_RECALL_KS) if cases else {f"R@{k}": 0.0 for k in GROUP_RECALL_KS}
        return GroupRecall(queries=len(cases), recall=recall)

    def _benchmark_ranks(self) -> list[FailureCase]:
        """Every benchmark query's target rank and first results, computed once (held while computing:
        a second caller waits instead of ranking again) and cached on disk when `cache_dir` is set."""
        with self._ranks_lock:
            if self._ranks is None:
                cached = self._ranks_file()
                ranks = self._load_ranks(cached) if cached is not None else None
                if ranks is None:
                    ranks = self._compute_ranks()
                    if cached is not None:
                        self._save_ranks(cached, ranks)
                self._ranks = ranks
            return self._ranks

    def _ranks_file(self) -> Path | None:
        """Where the ranks of this model, index and benchmark split are cached (None: not cached)."""
        if self.cache_dir is None or self.source is None:
            return None
        key = json.dumps([weights_fingerprint(self.model), self.index.info.get("files"), self.source.cache_key()],
                         sort_keys=True)
        name = self.source.name.replace("/", "-")
        return self.cache_dir / f"{self.model.config.name}-{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def _load_ranks(self, path: Path) -> list[FailureCase] | None:
        if not path.is_file():
            return None
        queries = {q.pairid: q for q in self.benchmark_queries()}
        try:
            rows = json.loads(path.read_text())["cases"]
            cases = [FailureCase(query=queries[row["pairid"]], rank=int(row["rank"]),
                                 target_score=float(row["target_score"]), top_ids=[str(i) for i in row["top_ids"]],
                                 top_scores=[float(x) for x in row["top_scores"]]) for row in rows]
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ranking the benchmark again: cached %s is unusable (%s)", path, error)
            return None
        if len(cases) != len(queries):
            logger.warning("ranking the benchmark again: cached %s holds %d of %d queries", path, len(cases),
                           len(queries))
            return None
        return cases

    def _save_ranks(self, path: Path, cases: list[FailureCase]) -> None:
        rows = [{"pairid": case.query.pairid, "rank": case.rank, "target_score": case.target_score,
                 "top_ids": case.top_ids, "top_scores": case.top_scores} for case in cases]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staging.write_text(json.dumps({"split": self.source.name, "cases": rows}))
            os.replace(staging, path)  # readers never see a half-written list
        except OSError as error:
            logger.warning("could not cache the benchmark ranks in %s: %s", path.parent, error)

    def _compute_ranks(self, batch_size: int = 32) -> list[FailureCase]:
        """Rank the gallery for every benchmark query: the target's rank (the reference excluded where
        the source's protocol excludes it) and the first FAILURE_TOP results."""
        queries = self.benchmark_queries()
        if not queries:
            return []
        exclude_reference = self.source.split.exclude_reference
        cases = []
        started = time.perf_counter()
        for start in range(0, len(queries), batch_size):
            batch = queries[start:start + batch_size]
            with torch.inference_mode():
                reference = torch.cat([self._gallery_features(q.reference_id, remember=False) for q in batch])
                vectors = self.model.encode_query(reference, [q.caption for q in batch]).query  # (B, D)
            scores = torch.as_tensor(self.index.score_all(vectors.float().cpu().numpy()), dtype=torch.float32)
            for query, row_scores in zip(batch, scores):  # row_scores: (N,)
                row_scores = row_scores.clone()
                if exclude_reference and query.reference_id != query.target_id:
                    row_scores[self._row_of[query.reference_id]] = float("-inf")
                target_score = row_scores[self._row_of[query.target_id]]
                top = torch.topk(row_scores, min(FAILURE_TOP, len(row_scores)))
                cases.append(FailureCase(query=query, rank=int((row_scores > target_score).sum()) + 1,
                                         target_score=float(target_score),
                                         top_ids=[self.index.ids[i] for i in top.indices.tolist()],
                                         top_scores=[float(x) for x in top.values]))
        misses = sum(case.rank > 1 for case in cases)
        logger.info("%s: %d of %d benchmark queries miss their target at rank 1 (ranked in %.1f s)",
                    self.source.name, misses, len(cases), time.perf_counter() - started)
        return cases


def default_gallery_index(model: SPRCModel, items: list[GalleryItem], gallery_name: str, cache_root: str | Path,
                          progress: bool = True, precision: str = "auto", seed: str | Path | None = None
                          ) -> GalleryIndex:
    """The index of `items` for `model`, built on first use and cached under `cache_root`.

    The cache folder is named by the model's weights fingerprint, `gallery_name` (which
    must change when the items do) and the encoding `precision`
    (`cir_core.precision.GALLERY_PRECISIONS`; "auto" is bf16 on a CPU with bf16 units:
    about twice fp32's speed, vectors within 2e-3), so a retrained model or another
    precision gets a new index; `GalleryIndex.load` re-checks the fingerprint anyway.
    """
    if seed is not None and Path(seed).is_file():
        from cir_core.index_seed import index_from_seed, usable_seed

        seeded = usable_seed(seed, model, items, precision)  # logs why not when it cannot be used
        if seeded is not None:  # the folder is named by the precision the seed was encoded in
            folder = (Path(cache_root) / "indexes"
                      / f"{model.config.name}-{weights_fingerprint(model)}-{gallery_name}-{seeded.meta['precision']}")
            if folder.is_dir():
                try:
                    return GalleryIndex.load(folder, model=model)
                except (GalleryIndexError, FileNotFoundError) as error:
                    logger.warning("writing the cached gallery index again: %s", error)
            try:
                return index_from_seed(seeded, model, items, folder, progress)
            except ValueError as error:  # vectors unreadable past a sound header: encode instead
                logger.warning("encoding the gallery instead of using the shipped index: %s", error)
    precision = resolve_gallery_precision(model, precision)
    # A large vision encoder (ViT-g) costs seconds per query on a CPU; its stored output lets a
    # query whose reference is a gallery image skip it (0.7 MB per image). Small models recompute.
    store_vision = has_large_vision_encoder(model)
    folder = (Path(cache_root) / "indexes" / f"{model.config.name}-{weights_fingerprint(model)}-{gallery_name}-"
              f"{precision}{'-vision' if store_vision else ''}")
    if folder.is_dir():
        try:
            return GalleryIndex.load(folder, model=model)
        except (GalleryIndexError, FileNotFoundError) as error:
            logger.warning("rebuilding the cached gallery index: %s", error)
    logger.info("indexing %d gallery images (%s) into %s (once, %s)", len(items), gallery_name, folder, precision)
    return GalleryIndex.build(model, items, folder, progress=progress, precision=precision,
                              store_vision_features=store_vision)
