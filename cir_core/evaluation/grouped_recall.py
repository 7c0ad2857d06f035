"""Recall over all queries and per query group: the protocol of benchmarks whose queries carry
their groups (scenes3d), with the reference left out of its own ranking.

With each gallery image's (scene, camera) labels, a miss is also classified by what the
first result got wrong: the right scene from the wrong viewpoint, the right viewpoint with
the wrong edit, or something else (`MISS_KINDS`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from cir_core.data.triplets import TripletSplit
from cir_core.evaluation.features import gallery_columns, split_scores
from cir_core.evaluation.metrics import exclude, recall_at_k, target_ranks

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10, 50)
GROUP_KS = (1, 5)
WRONG_VIEWPOINT = "right scene, wrong viewpoint"
WRONG_EDIT = "right viewpoint, wrong edit"
OTHER_MISS = "other"
MISS_KINDS = (WRONG_VIEWPOINT, WRONG_EDIT, OTHER_MISS)


def miss_kind(first: tuple[str, str], target: tuple[str, str]) -> str:
    """How a first result's (scene, camera) differs from the target's."""
    same_scene, same_camera = first[0] == target[0], first[1] == target[1]
    if same_scene and not same_camera:
        return WRONG_VIEWPOINT
    if same_camera and not same_scene:
        return WRONG_EDIT
    return OTHER_MISS


@dataclass
class GroupedRecallReport:
    """Recall of one split, over all queries and per group (percent)."""

    split: str  # e.g. "scenes3d/test"
    num_queries: int  # queries ranked
    recall: dict[str, float]  # "R@1" ... "R@50" over all queries
    per_group: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> {"R@1", "R@5", "queries"}
    misses: dict[str, int] = field(default_factory=dict)  # miss kind -> queries, when image labels were given
    ranks: list[int] = field(default_factory=list)  # 0-based target rank per query, in split order
    first_results: list[str] = field(default_factory=list)  # the id each query retrieved first

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "num_queries": self.num_queries, "recall": self.recall,
                "per_group": self.per_group, "misses": self.misses}


def grouped_recall_from_scores(scores: torch.Tensor, split: TripletSplit,
                               labels: dict[str, tuple[str, str]] | None = None) -> GroupedRecallReport:
    """The report from a (Nq, Ng) score matrix whose columns follow `split.gallery`; `labels`
    (image id -> (scene, camera)) classifies the misses against each query's `target_scene` and
    `target_camera` extras."""
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
    if labels is not None:
        misses = dict.fromkeys(MISS_KINDS, 0)
        for triplet, rank, first_id in zip(triplets, ranks.tolist(), first):
            if rank > 0:
                target = (triplet.extras.get("target_scene"), triplet.extras.get("target_camera"))
                misses[miss_kind(labels[first_id], target)] += 1
    return GroupedRecallReport(split=split.name, num_queries=len(triplets), recall=recall_at_k(ranks, RECALL_KS),
                               per_group=per_group, misses=misses, ranks=ranks.tolist(), first_results=first)


def evaluate_grouped_recall(model, split: TripletSplit, batch_size: int = 32, progress: bool = True,
                            labels: dict[str, tuple[str, str]] | None = None) -> GroupedRecallReport:
    """Rank the split's gallery for every query with `model` and report recall per group (and the
    misses by kind, given the gallery's (scene, camera) `labels`)."""
    report = grouped_recall_from_scores(split_scores(model, split, None, batch_size, progress), split, labels)
    logger.info("%s: R@1 %.2f R@5 %.2f over %d queries", split.name, report.recall["R@1"], report.recall["R@5"],
                report.num_queries)
    return report
