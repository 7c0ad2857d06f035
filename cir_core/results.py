"""The answers of the engine: dataclasses with documented fields, never positional tuples.

`RetrievalResult` (ranked `Hit`s, `StageTimings`, the ground truth's `GroundTruth` rank,
an optional `explain.Explanation`) answers a search; `Comparison` (one `MethodRanking`
per query formation) answers a comparison. Benchmark reports live with their evaluation
(`cir_core.evaluation.failures`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cir_core.explain import Explanation


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


def hits_json(hits: list[Hit]) -> list[dict]:
    return [{"rank": h.rank, "id": h.id, "score": round(h.score, 6), "label": h.label} for h in hits]


def ground_truth_json(truth: GroundTruth | None) -> dict | None:
    if truth is None:
        return None
    return {"id": truth.id, "rank": truth.rank, "score": round(truth.score, 6), "in_top_k": truth.in_top_k}


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
        """Plain-JSON summary: ranked ids and scores, ground truth, notes, timings, and the
        explanation's numbers (`Explanation.to_json`; None when none was asked for)."""
        return {
            "caption": self.caption,
            "reference_id": self.reference_id,
            "results": hits_json(self.hits),
            "ground_truth": ground_truth_json(self.ground_truth),
            "notes": list(self.notes),
            "timings_ms": {"image_encode": round(self.timings.image_encode_ms, 2),
                           "prompt": round(self.timings.prompt_ms, 2),
                           "compose": round(self.timings.compose_ms, 2),
                           "search": round(self.timings.search_ms, 2),
                           "explain": round(self.timings.explain_ms, 2),
                           "total": round(self.timings.total_ms, 2)},
            "explanation": None if self.explanation is None else self.explanation.to_json(),
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

    def to_json(self) -> dict:
        """Plain-JSON summary: per method, its ranked ids and scores and the ground truth's rank."""
        return {
            "caption": self.caption,
            "reference_id": self.reference_id,
            "rankings": [{"name": ranking.name, "description": ranking.description,
                          "results": hits_json(ranking.hits), "ground_truth": ground_truth_json(ranking.ground_truth)}
                         for ranking in self.rankings],
            "notes": list(self.notes),
        }


@dataclass
class ModelSummary:
    """What an app needs to know of the model it serves, without reaching into it."""

    name: str  # the model config's name
    prompt_tokens: int  # Q: vectors in the sentence prompt (and attention maps per query)
    query_mode: str  # how the composed query is formed ("sprc" or a baseline's mode)
    query_mode_description: str  # that, in words
    explainable: bool  # whether searches can return explanations (only a sentence prompt has them)
    description_weight: float = 0.0  # weight of the image-description contrastive term it was trained with (0: none)
