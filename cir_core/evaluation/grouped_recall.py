"""Recall over all queries and per query group: the protocol of benchmarks whose queries carry
their groups (scenes3d), with the reference left out of its own ranking.

Given the dataset's classifier of misses (target id, first result's id -> kind), each miss
is also counted by kind (scenes3d: `cir_core.data.scenes3d.misses`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cir_core.data.triplets import TripletSplit
from cir_core.evaluation.features import gallery_columns, split_scores
from cir_core.evaluation.metrics import exclude, recall_at_k, target_ranks
from cir_core.precision import query_model

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10, 50)
GROUP_KS = (1, 5)

@dataclass
class GroupedRecallReport:
    """Recall of one split, over all queries and per group (percent)."""

    split: str  # e.g. "scenes3d/test"
    num_queries: int  # queries ranked
    recall: dict[str, float]  # "R@1" ... "R@50" over all queries
    per_group: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> {"R@1", "R@5", "queries"}
    misses: dict[str, int] = field(default_factory=dict)  # miss kind -> queries, when a classifier was given
    ranks: list[int] = field(default_factory=list)  # 0-based target rank per query, in split order
    first_results: list[str] = field(default_factory=list)  # the id each query retrieved first

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "num_queries": self.num_queries, "recall": self.recall,
                "per_group": self.per_group, "misses": self.misses}


def grouped_recall_from_scores(scores: torch.Tensor, split: TripletSplit,
                               classify: Callable[[str, str], str] | None = None,
                               kinds: tuple[str, ...] = ()) -> GroupedRecallReport:
    """The report from a (Nq, Ng) score matrix whose columns follow `split.gallery`; `classify`
    (target id, first result's id -> one of `kinds`) counts the misses by kind."""
    triplets = [t for t in split.triplets if t.target is not None]
    if len(triplets) != scores.shape[0]:
        raise ValueError(f"{split.name}: {scores.shape[0]} score rows for {len(triplets)} queries")
    if split.exclude_reference:
        scores = exclude(scores, gallery_columns(split, [t.reference for t in triplets], "reference"))
    ranks = target_ranks(scores, gallery_columns(split, [t.target for t in triplets], "target"))
    per_group: dict[str, dict[str, float]] = {}
    names = sorted({group for t in triplets for group in t.extras.get("groups", ())})
    for name in names:
        members = torch.tensor([name in t.extras.get("groups", ()) for t in triplets])
        per_group[name] = {**recall_at_k(ranks[members], GROUP_KS), "queries": int(members.sum())}
    first = [split.gallery[column] for column in scores.argmax(dim=1).tolist()]
    misses: dict[str, int] = {}
    if classify is not None:
        misses = dict.fromkeys(kinds, 0)
        for triplet, rank, first_id in zip(triplets, ranks.tolist(), first):
            if rank > 0:
                kind = classify(triplet.target, first_id)
                misses[kind] = misses.get(kind, 0) + 1
    return GroupedRecallReport(split=split.name, num_queries=len(triplets), recall=recall_at_k(ranks, RECALL_KS),
                               per_group=per_group, misses=misses, ranks=ranks.tolist(), first_results=first)


def evaluate_grouped_recall(model, split: TripletSplit, batch_size: int = 32, progress: bool = True,
                            classify: Callable[[str, str], str] | None = None, kinds: tuple[str, ...] = (),
                            query_precision: str = "fp32", gallery_precision: str = "fp32") -> GroupedRecallReport:
    """Rank the split's gallery for every query with `model` and report recall per group (and the
    misses by kind, given the dataset's classifier). `query_precision` encodes the queries as an
    engine with that setting does, `gallery_precision` the gallery as an index built with it."""
    with torch.inference_mode():
        scores = split_scores(model, split, None, batch_size, progress, cache_reference_features=True,
                              query_model=query_model(model, query_precision), gallery_precision=gallery_precision)
    report = grouped_recall_from_scores(scores, split, classify, kinds)
    logger.info("%s: R@1 %.2f R@5 %.2f over %d queries", split.name, report.recall["R@1"], report.recall["R@5"],
                report.num_queries)
    return report
