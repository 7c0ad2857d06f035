"""The CIRR protocol (validation metrics) and the test-server submission files.

Official protocol: the gallery is every image of the split and each query's reference
is removed from its own ranking. Recall@1/5/10/50 is read on that global ranking;
Recall_subset@1/2/3 on the same ranking filtered to the query's `img_set.members`
(minus the reference). Headline: (R@5 + Rsubset@1) / 2.

The test server takes two JSON files, `recall_submission_<name>.json` (top 50 of the
global ranking) and `recall_subset_submission_<name>.json` (top 3 of the subset
ranking), each `{"version": "rc2", "metric": ..., "<pairid>": [image names]}`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from cir_core.data.cirr import CIRR_VERSION
from cir_core.data.triplets import TripletSplit
from cir_core.evaluation.features import RetrievalFeatures, gallery_columns, split_scores
from cir_core.evaluation.metrics import exclude, keep_only, recall_at_k, target_ranks
from cir_core.model import SPRCModel

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
SUBMISSION_TOP = 50  # names per query in the global-ranking file, as the server expects
SUBSET_SUBMISSION_TOP = 3  # names per query in the subset-ranking file


@dataclass
class CirrReport:
    """CIRR metrics of one split (percentages)."""

    split: str  # TripletSplit.name, e.g. "cirr/val"
    num_queries: int  # queries evaluated
    recall: dict[str, float]  # "R@1", "R@5", "R@10", "R@50" on the global ranking, reference excluded
    recall_subset: dict[str, float]  # "Rsubset@1", "Rsubset@2", "Rsubset@3" within img_set members
    average: float  # (R@5 + Rsubset@1) / 2, the headline number

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CirrSubmission:
    """The two files written for the CIRR evaluation server."""

    recall_file: Path  # recall_submission_<name>.json: top 50 per pairid
    recall_subset_file: Path  # recall_subset_submission_<name>.json: top 3 per pairid
    num_queries: int  # pairids in each file


def reference_columns(split: TripletSplit) -> torch.Tensor:
    return gallery_columns(split, [t.reference for t in split.triplets], "reference")


def subset_mask(split: TripletSplit) -> torch.Tensor:
    """(Nq, Ng) bool: True where the gallery image is in the query's img_set.members, minus its reference."""
    column = {image_id: index for index, image_id in enumerate(split.gallery)}
    mask = torch.zeros(len(split), len(split.gallery), dtype=torch.bool)
    for row, triplet in enumerate(split.triplets):
        members = triplet.extras.get("members")
        if members is None:
            raise ValueError(f"{split.name}: query {triplet.pairid} has no img_set members")
        outside = [m for m in members if m not in column]
        if outside:
            raise ValueError(f"{split.name}: member {outside[0]} of query {triplet.pairid} is not in the gallery")
        mask[row, [column[m] for m in members if m != triplet.reference]] = True
    return mask


def cirr_report_from_scores(scores: torch.Tensor, split: TripletSplit) -> CirrReport:
    """CIRR metrics from a (Nq, Ng) score matrix whose columns follow `split.gallery`."""
    if any(t.target is None for t in split.triplets):
        raise ValueError(f"{split.name} has no targets (a test split); write a submission instead")
    targets = gallery_columns(split, [t.target for t in split.triplets], "target")
    ranked = exclude(scores, reference_columns(split))
    recall = recall_at_k(target_ranks(ranked, targets), RECALL_KS)
    subset_ranks = target_ranks(keep_only(ranked, subset_mask(split)), targets)
    recall_subset = recall_at_k(subset_ranks, SUBSET_KS, prefix="Rsubset")
    average = (recall["R@5"] + recall_subset["Rsubset@1"]) / 2
    return CirrReport(split=split.name, num_queries=len(split), recall=recall, recall_subset=recall_subset,
                      average=average)


def evaluate_cirr(model: SPRCModel | None, split: TripletSplit, batch_size: int = 32, progress: bool = True,
                  features: RetrievalFeatures | None = None, cache_reference_features: bool = False,
                  num_workers: int = 0) -> CirrReport:
    """The official CIRR validation protocol; `features` (cached) replaces the model."""
    scores = split_scores(model, split, features, batch_size, progress, cache_reference_features, num_workers)
    report = cirr_report_from_scores(scores, split)
    logger.info("%s: R@1 %.2f R@5 %.2f Rsubset@1 %.2f avg %.2f", split.name, report.recall["R@1"],
                report.recall["R@5"], report.recall_subset["Rsubset@1"], report.average)
    return report


def _ranked_names(scores: torch.Tensor, gallery: list[str], top: int) -> list[list[str]]:
    """Best-first gallery names per row, -inf columns dropped, ties in gallery order."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]
    keep = scores.gather(1, order) > float("-inf")
    return [[gallery[c] for c, k in zip(row.tolist(), kept.tolist()) if k] for row, kept in zip(order, keep)]


def submission_pairids(split: TripletSplit) -> list[str]:
    """The queries' pairids as the server keys them; ValueError for no queries or a repeated pairid
    (the files map pairid -> ranking, so a repeated one would silently drop a query)."""
    pairids = [str(int(t.pairid)) for t in split.triplets]
    if not pairids:
        raise ValueError(f"{split.name} has no queries; there is nothing to submit")
    repeated = sorted(pairid for pairid, count in Counter(pairids).items() if count > 1)
    if repeated:
        raise ValueError(f"{split.name}: pairids must be unique; {', '.join(repeated[:5])} appear more than once")
    return pairids


def cirr_predictions(scores: torch.Tensor, split: TripletSplit, top: int = SUBMISSION_TOP,
                     subset_top: int = SUBSET_SUBMISSION_TOP) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """pairid -> top image names on the global ranking and on the subset ranking (reference excluded)."""
    pairids = submission_pairids(split)
    ranked = exclude(scores, reference_columns(split))
    global_names = _ranked_names(ranked, split.gallery, top)
    subset_names = _ranked_names(keep_only(ranked, subset_mask(split)), split.gallery, subset_top)
    for pairid, names, subset in zip(pairids, global_names, subset_names):
        if len(names) < top or len(subset) < subset_top:
            raise ValueError(f"{split.name}: query {pairid} has only {len(names)} gallery candidates and "
                             f"{len(subset)} subset candidates besides its reference; the server expects "
                             f"{top} and {subset_top}")
    return dict(zip(pairids, global_names)), dict(zip(pairids, subset_names))


def write_submission_files(recall: dict[str, list[str]], recall_subset: dict[str, list[str]],
                           out_dir: str | Path, name: str) -> CirrSubmission:
    """The two server files from prediction dicts (keys sorted, as the official writer does)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for metric, predictions in (("recall", recall), ("recall_subset", recall_subset)):
        path = out_dir / f"{metric}_submission_{name}.json"
        path.write_text(json.dumps({"version": CIRR_VERSION, "metric": metric, **predictions}, sort_keys=True))
        files.append(path)
    return CirrSubmission(recall_file=files[0], recall_subset_file=files[1], num_queries=len(recall))


def write_cirr_submission(model: SPRCModel | None, split: TripletSplit, out_dir: str | Path, name: str = "sprc",
                          batch_size: int = 32, progress: bool = True, features: RetrievalFeatures | None = None,
                          cache_reference_features: bool = False, num_workers: int = 0) -> CirrSubmission:
    """Rank every query of `split` (normally cirr/test1) and write the evaluation server's two files."""
    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"submission name {name!r} must be a non-empty file-name part without slashes")
    submission_pairids(split)  # before the (slow) encoding
    scores = split_scores(model, split, features, batch_size, progress, cache_reference_features, num_workers)
    recall, recall_subset = cirr_predictions(scores, split)
    submission = write_submission_files(recall, recall_subset, out_dir, name)
    logger.info("%s: wrote %s and %s (%d queries)", split.name, submission.recall_file,
                submission.recall_subset_file, submission.num_queries)
    return submission
