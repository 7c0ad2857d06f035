"""The shapes benchmark protocol.

Each split ranks its own gallery (every scene of the split, distractors and hard
negatives); a query's reference is removed from its own ranking, and a query is
correct when the retrieved image id equals the target id (identical scenes share one
id). Reported: R@1/5/10/50 in percent overall, per edit type, and on the "novel"
subset (queries involving a held-out (shape, colour) combination or phrasing) next to
the rest ("seen"), plus every query's 0-based target rank for listing failures.

The gallery is encoded once and its vision features are re-used as the queries'
references (a shapes reference is always in its gallery), so no image is encoded twice.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cir_core.data.shapes_scene import ShapesScene
from cir_core.data.triplets import TripletSplit
from cir_core.evaluation.features import gallery_columns, split_scores
from cir_core.precision import query_model
from cir_core.evaluation.metrics import exclude, recall_at_k, target_ranks
from cir_core.evaluation.shapes_confusions import top1_confusions
from cir_core.model import SPRCModel

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10, 50)


@dataclass
class ShapesReport:
    """Shapes metrics of one split (recalls in percent; an empty subset has no recalls)."""

    split: str  # TripletSplit.name, e.g. "shapes/test"
    num_queries: int  # queries ranked
    gallery_size: int  # gallery images per ranking, before the reference is removed
    recall: dict[str, float]  # "R@1", "R@5", "R@10", "R@50" over all queries
    per_edit: dict[str, dict[str, float]]  # edit type -> its R@k
    edit_counts: dict[str, int]  # edit type -> its number of queries
    novel: dict[str, float]  # R@k over queries with a held-out combination or phrasing
    num_novel: int  # queries in the novel subset
    seen: dict[str, float]  # R@k over the other queries
    pairids: list[int | str]  # query ids in split order, aligned with `ranks`
    ranks: list[int]  # 0-based rank of each query's target (0 = retrieved first)
    first_results: list[str] = field(default_factory=list)  # id each query retrieved first
    confusions: dict[str, int] = field(default_factory=dict)  # misses by kind (shapes_confusions), when labels given
    # with labels: R@k and query count by the number of objects in the target ("1".."5")
    per_object_count: dict[str, dict[str, float]] = field(default_factory=dict)
    object_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-query lists)."""
        return {key: value for key, value in asdict(self).items() if key not in ("pairids", "ranks", "first_results")}


def _subset_recall(ranks: torch.Tensor, mask: list[bool]) -> dict[str, float]:
    selected = ranks[torch.tensor(mask, dtype=torch.bool)]
    return recall_at_k(selected, RECALL_KS) if selected.numel() else {}


def shapes_report_from_scores(scores: torch.Tensor, split: TripletSplit) -> ShapesReport:
    """The report from a (Nq, Ng) score matrix whose columns follow `split.gallery`."""
    if any(t.target is None for t in split.triplets):
        raise ValueError(f"{split.name}: every shapes query needs a target")
    if scores.shape != (len(split), len(split.gallery)):
        raise ValueError(f"{split.name}: scores of shape {tuple(scores.shape)} do not fit "
                         f"{len(split)} queries x {len(split.gallery)} gallery images")
    targets = gallery_columns(split, [t.target for t in split.triplets], "target")
    if split.exclude_reference:
        scores = exclude(scores, gallery_columns(split, [t.reference for t in split.triplets], "reference"))
    ranks = target_ranks(scores, targets)
    first_results = [split.gallery[column] for column in _first_columns(scores, targets, ranks).tolist()]
    edits = [t.edit or "unknown" for t in split.triplets]
    novel = [bool(t.extras.get("novel", False)) for t in split.triplets]
    edit_types = sorted(set(edits))
    return ShapesReport(
        split=split.name,
        num_queries=len(split),
        gallery_size=len(split.gallery),
        recall=recall_at_k(ranks, RECALL_KS),
        per_edit={edit: _subset_recall(ranks, [e == edit for e in edits]) for edit in edit_types},
        edit_counts={edit: edits.count(edit) for edit in edit_types},
        novel=_subset_recall(ranks, novel),
        num_novel=sum(novel),
        seen=_subset_recall(ranks, [not n for n in novel]),
        pairids=[t.pairid for t in split.triplets],
        ranks=ranks.tolist(),
        first_results=first_results,
    )


def _first_columns(scores: torch.Tensor, targets: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Each query's first result; for a miss (rank > 0) never its target, even when tied with it.

    target_ranks counts ties against the target, so a tie is a miss, and its first result
    must be the image it tied with for the miss to be described.
    """
    columns = scores.argmax(dim=1)
    tied = torch.nonzero((ranks > 0) & (columns == targets)).flatten()
    if tied.numel():
        masked = scores[tied].clone()
        masked[torch.arange(tied.numel()), targets[tied]] = float("-inf")
        columns[tied] = masked.argmax(dim=1)
    return columns


def _add_object_counts(report: ShapesReport, split: TripletSplit, scenes: dict[str, ShapesScene]) -> None:
    """R@k by how many objects the target holds: a lone object has every other placement of
    itself in a full gallery, a crowded scene few rivals, so the two are far apart in difficulty."""
    counts = [len(scenes[t.target].objects) for t in split.triplets]  # top1_confusions checked the labels
    ranks = torch.tensor(report.ranks)
    for count in sorted(set(counts)):
        mask = [c == count for c in counts]
        report.per_object_count[str(count)] = _subset_recall(ranks, mask)
        report.object_counts[str(count)] = sum(mask)


def evaluate_shapes(model: SPRCModel, split: TripletSplit, batch_size: int = 64, progress: bool = True,
                    scenes: dict[str, ShapesScene] | None = None, query_precision: str = "fp32",
                    gallery_precision: str = "fp32") -> ShapesReport:
    """Rank the split's gallery for every query with `model` (eval mode during the run, its own device).

    With the scene labels (`read_shapes_scenes`), the report also counts the misses by kind.
    `query_precision` encodes the queries as an engine with that setting does, and
    `gallery_precision` the gallery as an index built with that setting does.
    """
    if not split.triplets:
        raise ValueError(f"{split.name} has no queries to evaluate")
    with torch.inference_mode():
        scores = split_scores(model, split, batch_size=batch_size, progress=progress, cache_reference_features=True,
                              query_model=query_model(model, query_precision), gallery_precision=gallery_precision)
        report = shapes_report_from_scores(scores, split)
    if scenes is not None:
        report.confusions = top1_confusions(split.triplets, report.first_results, scenes)
        _add_object_counts(report, split, scenes)
    logger.info("%s: R@1 %.2f R@5 %.2f R@10 %.2f (%d queries, gallery %d)", split.name, report.recall["R@1"],
                report.recall["R@5"], report.recall["R@10"], report.num_queries, report.gallery_size)
    return report
