"""The FashionIQ protocol: per-category R@10 and R@50, their averages and (R@10 + R@50) / 2.

Official details: each category ranks its own val image split; the query caption is
"c1 and c2"; the reference is NOT removed from the gallery (it may outrank the target).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from cir_core.data.triplets import TripletSplit
from cir_core.evaluation.features import RetrievalFeatures, gallery_columns, split_scores
from cir_core.evaluation.metrics import recall_at_k, target_ranks
from cir_core.model import SPRCModel

logger = logging.getLogger(__name__)

FASHIONIQ_KS = (10, 50)


@dataclass
class FashionIQReport:
    """FashionIQ metrics (percentages)."""

    categories: dict[str, dict[str, float]]  # category -> {"R@10", "R@50"}
    num_queries: dict[str, int]  # category -> queries evaluated
    recall: dict[str, float]  # {"R@10", "R@50"} averaged over categories (unweighted, as official)
    average: float  # (R@10 + R@50) / 2 of the category averages, the headline number

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fashioniq_recall_from_scores(scores: torch.Tensor, split: TripletSplit) -> dict[str, float]:
    """R@10 and R@50 of one category from (Nq, Ng) scores whose columns follow `split.gallery`."""
    if any(t.target is None for t in split.triplets):
        raise ValueError(f"{split.name} has no targets; only splits with targets can be evaluated")
    targets = gallery_columns(split, [t.target for t in split.triplets], "target")
    return recall_at_k(target_ranks(scores, targets), FASHIONIQ_KS)


def fashioniq_report(recall_by_category: dict[str, dict[str, float]], num_queries: dict[str, int]) -> FashionIQReport:
    """Category averages and the headline from per-category recalls."""
    if not recall_by_category:
        raise ValueError("no FashionIQ category to report")
    count = len(recall_by_category)
    recall = {f"R@{k}": sum(r[f"R@{k}"] for r in recall_by_category.values()) / count for k in FASHIONIQ_KS}
    return FashionIQReport(categories=recall_by_category, num_queries=num_queries, recall=recall,
                           average=(recall["R@10"] + recall["R@50"]) / 2)


def evaluate_fashioniq(model: SPRCModel | None, splits_by_category: dict[str, TripletSplit], batch_size: int = 32,
                       progress: bool = True, features_by_category: dict[str, RetrievalFeatures] | None = None,
                       cache_reference_features: bool = False, num_workers: int = 0) -> FashionIQReport:
    """The official FashionIQ validation protocol over the given categories (cached features replace the model)."""
    if not isinstance(splits_by_category, dict):
        raise TypeError("evaluate_fashioniq takes {category: TripletSplit} (one read_fashioniq split per category); "
                        "a merged split has lost the per-category galleries the protocol ranks against")
    recall_by_category, num_queries = {}, {}
    for category, split in splits_by_category.items():
        if split.exclude_reference:
            raise ValueError(f"{split.name}: FashionIQ keeps the reference in the gallery (exclude_reference=False)")
        features = (features_by_category or {}).get(category)
        scores = split_scores(model, split, features, batch_size, progress, cache_reference_features, num_workers)
        recall_by_category[category] = fashioniq_recall_from_scores(scores, split)
        num_queries[category] = len(split)
        logger.info("%s: R@10 %.2f R@50 %.2f", split.name, recall_by_category[category]["R@10"],
                    recall_by_category[category]["R@50"])
    return fashioniq_report(recall_by_category, num_queries)
