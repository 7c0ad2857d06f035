"""Engine: the one object an app calls to search, compare and explain composed queries.

The engine loads a model and a gallery index once and only reads them afterwards, so
one engine serves concurrent requests from several threads. What it computes lazily
lives in rooms of its own, each guarded by its lock: the gallery's vision features
(`feature_cache`), the prompt view's vocabularies and caption bank (`prompt_views`),
the benchmark's ranks (`evaluation.failures`).

Answers are the dataclasses of `cir_core.results` (and `BenchmarkReport` of
`evaluation.failures`); bad input raises `inputs.QueryError`, a ValueError whose
message says what is wrong. A labelled benchmark reaches the engine as a
`data.spec.BenchmarkSource`; the engine knows nothing else of benchmarks.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cir_core.checkpoints import load_model, weights_fingerprint
from cir_core.device import describe_placement, limit_threads, place_model, resolve_device
from cir_core.config import PROMPT_MODES, QUERY_MODE_DESCRIPTIONS
from cir_core.explain import RelevanceMap, result_relevance
from cir_core.index import GalleryIndex
from cir_core.data.spec import BenchmarkSource
from cir_core.evaluation.failures import (
    BenchmarkQuery,
    BenchmarkRanking,
    BenchmarkReport,
    FailureCase,
    ranks_file,
)
from cir_core.index_cache import serving_index, usable_cache_root
from cir_core.feature_cache import FeatureCache
from cir_core.inputs import QueryError, check_caption, check_k, load_query_image
from cir_core.model import SPRCModel
from cir_core.results import (Comparison, GroundTruth, Hit, MethodRanking, ModelSummary, RetrievalResult,
                              StageTimings)
from cir_core.prompt_views import PromptViews
from cir_core.query_graphs import graphed_queries
from cir_core.precision import check_gallery_precision, check_query_precision, query_model, resolve_query_precision
from cir_core.transforms import ImageTransform

logger = logging.getLogger(__name__)

class Engine:
    """A loaded model and gallery index; every method is safe to call from several threads."""

    def __init__(self, model: SPRCModel, index: GalleryIndex, source: BenchmarkSource | None = None,
                 feature_cache_size: int = 256, num_threads: int = 1, cache_dir: str | Path | None = None,
                 query_precision: str = "auto"):
        """`index` was built with `model`; `source`, a labelled benchmark split, provides the queries
        for examples, ground truth and failure inspection (None: a plain gallery). `cache_dir`
        keeps the benchmark's ranks and the caption bank across restarts (None: in memory only).
        `num_threads` is the process's torch/faiss thread count (one per request suits a server).
        `query_precision` "bf16" or "int8" encodes searches without explanations with a
        reduced-precision copy of the model (`cir_core.precision`; explanations use fp32);
        "auto" is int8 for a ViT-g-sized model on a CPU, else the model itself."""
        check_query_precision(query_precision)
        limit_threads(num_threads)
        self.model = model.eval()
        self.index = index
        self.source = source
        self.transform = ImageTransform(model.config.preprocess)
        self._row_of = {image_id: row for row, image_id in enumerate(index.ids)}
        self.features = FeatureCache(feature_cache_size)  # gallery references' vision features
        self._ranking = (BenchmarkRanking(source, index.ids, self._score_benchmark_queries, self._ranks_file)
                         if source is not None else None)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.prompt_views = PromptViews(self.model, index, source, self.cache_dir)
        self.query_precision = resolve_query_precision(model, query_precision)
        self._query_model = query_model(model, self.query_precision)
        # On CUDA, batch-1 queries replay CUDA graphs recorded now, so that the first visitor does not wait.
        self._query_passes = graphed_queries(self._query_model)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_uris(cls, model_uri: str, index_dir: str | Path | None = None, gallery_data: str | Path | None = None,
                  source: BenchmarkSource | None = None, cache_root: str | Path | None = None, progress: bool = True,
                  num_threads: int = 1, gallery_precision: str = "auto", device: str = "auto",
                  index_seed: str | Path | None = None, **kwargs) -> Engine:
        """Load a model from a URI and the index it serves (`cir_core.index_cache.serving_index`: a
        prebuilt `index_dir`, else the gallery of `source` or of the folder `gallery_data`, indexed
        once in `gallery_precision` and cached under `cache_root`, default ~/.cache/cir or
        $CIR_CACHE). `source` also provides the benchmark queries; `device` is "auto" (CUDA
        when available), "cpu" or "cuda" (fp16 there, `cir_core.device.place_model`)."""
        check_gallery_precision(gallery_precision)
        device = resolve_device(device)  # refuses cuda without CUDA before the (slow) model load
        if index_dir is None and source is None and gallery_data is None:
            raise ValueError("no gallery: give an index folder, a benchmark source or a folder of images")
        limit_threads(num_threads)  # the gallery build below too
        model = place_model(load_model(model_uri), device)
        cache_root = Path(cache_root) if cache_root is not None else usable_cache_root()
        index = serving_index(model, cache_root, index_dir, source, gallery_data, progress, gallery_precision,
                              index_seed)
        logger.info("engine ready: model %s, %d gallery images", model.config.name, len(index.ids))
        kwargs.setdefault("cache_dir", cache_root / "failures")
        return cls(model, index, source=source, num_threads=num_threads, **kwargs)

    # ------------------------------------------------------------------ public API
    @property
    def gallery_ids(self) -> list[str]:
        return list(self.index.ids)

    def model_summary(self) -> ModelSummary:
        config = self.model.config
        return ModelSummary(name=config.name, prompt_tokens=self.model.num_query_tokens, query_mode=config.query_mode,
                            query_mode_description=QUERY_MODE_DESCRIPTIONS[config.query_mode],
                            explainable=config.query_mode in PROMPT_MODES,
                            description_weight=config.loss.description_weight)

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
        """The file of a gallery image, for code that reads it; an app shows `gallery_image` instead."""
        return str(self.index.paths[self._row(image_id)])

    def gallery_image(self, image_id: str, max_side: int | None = None) -> Image.Image:
        """A gallery image as RGB pixels (QueryError when its file is gone or unreadable), shrunk to fit
        `max_side` x `max_side` when given.

        An app shows these pixels rather than serving the indexed file, so that nothing but
        decoded images of the gallery ever leaves the server, whatever an index names.
        """
        image = load_query_image(self.gallery_path(image_id))
        if max_side is not None:
            image.thumbnail((max_side, max_side))
        return image

    def gallery_label(self, image_id: str) -> str:
        """The caption that describes a gallery image, else its label ("" when it has neither)."""
        row = self._row(image_id)
        return self.index.captions[row] or self.index.labels[row] or ""

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
        k = check_k(k, len(self._row_of))
        if ground_truth_id is not None:
            self._row(ground_truth_id)
        tokenize_started = time.perf_counter()
        caption_check = check_caption(self.model, caption)  # before the image: bad captions fail fast
        started = time.perf_counter()
        tokenize_ms = 1000 * (started - tokenize_started)
        prompted_mode = self.model.config.query_mode in PROMPT_MODES
        if explain and not prompted_mode:
            raise QueryError(f"explanations need a per-query prompt; this model's query mode is "
                             f"{self.model.config.query_mode!r} (search without explanations)")
        model = self.model if explain else self._query_passes
        reference_id, features, reference_image = self._reference(image, keep_image=explain, model=model)
        encoded = time.perf_counter()
        features = features.to(model.query_tokens.dtype)
        with torch.inference_mode():
            if prompted_mode:
                prompt, attentions = (model.query_prompt(features, caption_check.text, output_attentions=True)
                                      if explain else (model.query_prompt(features, caption_check.text), None))
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
            top_id = hits[0].id if hits else None
            relevance = self.relevance(query.float().cpu().numpy(), top_id) if top_id is not None else None
            seen = self.transform.resize_and_crop(reference_image)  # the pixels the attention maps belong to
            explanation = self.prompt_views.explain(prompt[0], attentions, seen, query, relevance, top_id,
                                                   caption=caption)
        timings = StageTimings(image_encode_ms=1000 * (encoded - started), prompt_ms=1000 * (prompted - encoded),
                               compose_ms=tokenize_ms + 1000 * (composed - prompted),
                               search_ms=1000 * (searched - composed),
                               explain_ms=1000 * (time.perf_counter() - searched) if explain else 0.0)
        result = RetrievalResult(caption=caption, reference_id=reference_id, hits=hits, timings=timings,
                                 query_vector=query.float().cpu().numpy(), notes=caption_check.notes,
                                 ground_truth=truth, explanation=explanation)
        return result

    def relevance(self, query_vector: np.ndarray, result_id: str) -> RelevanceMap:
        """Gradient-weighted attention over a gallery image's patches for its score under a query."""
        query = torch.as_tensor(np.asarray(query_vector), dtype=torch.float32)
        if query.shape != (self.model.config.embed_dim,):
            raise QueryError(f"a query vector has shape ({self.model.config.embed_dim},), got {tuple(query.shape)}")
        relevance = result_relevance(self.model, query, self._gallery_features(result_id)[0])
        relevance.view = self.transform.resize_and_crop(self.gallery_image(result_id))
        return relevance

    def compare(self, image, caption: str, k: int = 10, exclude_reference: bool = True,
                ground_truth_id: str | None = None) -> Comparison:
        """Text-only, image-only and SPRC rankings of one query.

        - text-only: the model's auxiliary-prompt query (learned prompt P' + caption, no
          image), SPRC's own caption-only query, trained against the same targets;
        - image-only: the mean of the reference's own Q target vectors, renormalised,
          scored like any query (max over each gallery image's Q vectors): "more like this";
        - the model's composed query (named by its query mode, "sprc" for SPRC checkpoints).
        """
        k = check_k(k, len(self._row_of))
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
        return self._ranking.queries() if self._ranking is not None else []

    def group_names(self) -> list[str]:
        """The query groups of the source, view-angle groups first ([] without a source)."""
        return self.source.group_names() if self.source is not None else []

    def failure_cases(self, group: str | None = None, keyword: str | None = None) -> list[FailureCase]:
        """Benchmark queries whose target is not first, in `group` and with `keyword` in the caption
        (None or "" = any): view-angle groups first, then worst rank first."""
        return self._ranking.failures(group, keyword) if self._ranking is not None else []

    def benchmark_report(self, group: str | None = None, keyword: str | None = None) -> BenchmarkReport:
        """Recall@1/5 of all benchmark queries and of each group, and the failures of `group` / `keyword`."""
        if self._ranking is None:
            raise QueryError("this gallery has no benchmark: start the app with --dataset to inspect failures")
        if group and group not in self.group_names():
            raise QueryError(f"unknown group {group!r}; this benchmark has {', '.join(self.group_names()) or 'none'}")
        return self._ranking.report(group, keyword)

    def prepare_caption_bank(self) -> threading.Thread:
        """Load or encode the prompt view's caption bank in a background thread (once)."""
        return self.prompt_views.prepare()

    def prepare_failures(self) -> threading.Thread:
        """Rank the benchmark queries (or read their ranks from the cache) in a background thread,
        so that the first look at the failure-inspection view does not wait for it."""
        def work():
            try:
                if self._ranking is not None:
                    self._ranking.cases()
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
        """(1, T, W) vision features of a gallery image: stored in the index, else from the feature cache."""
        stored = self.index.vision_features(self._row(image_id))  # (1, T, W) fp16 or None
        if stored is not None:  # a read from disk (under a millisecond), so not worth the cache's memory
            return torch.from_numpy(stored).to(self.model.device, dtype=self.model.query_tokens.dtype)

        def encode() -> torch.Tensor:
            with torch.inference_mode():
                return self.model.vision_features(self.transform(self.gallery_image(image_id)).unsqueeze(0))

        return self.features.get(image_id, encode, remember)

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

    def _ranks_file(self) -> Path | None:
        """Where the ranks of this model, index and benchmark split are cached (None: not cached)."""
        if self.cache_dir is None:
            return None
        return ranks_file(self.cache_dir, self.model.config.name,
                          [weights_fingerprint(self.model), self.index.info.get("files")], self.source)

    def _score_benchmark_queries(self, queries: list[BenchmarkQuery]) -> torch.Tensor:
        """(B, N) scores of B benchmark queries over every gallery image (nothing excluded)."""
        with torch.inference_mode():
            reference = torch.cat([self._gallery_features(q.reference_id, remember=False) for q in queries])
            vectors = self.model.encode_query(reference, [q.caption for q in queries]).query  # (B, D)
        return torch.as_tensor(self.index.score_all(vectors.float().cpu().numpy()), dtype=torch.float32)

