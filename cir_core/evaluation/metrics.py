"""Ranking metrics shared by every protocol.

Scores are (queries, gallery) similarity matrices; higher is better. Ranks are 0-based
(rank 0 = retrieved first). Recall values are percentages.
"""
from __future__ import annotations

import torch

EXCLUDED = float("-inf")


def exclude(scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Copy of `scores` with column `columns[i]` of row i set to -inf (e.g. the reference); -1 skips a row."""
    scores = scores.clone()
    rows = torch.arange(scores.shape[0])
    keep = columns >= 0
    scores[rows[keep], columns[keep]] = EXCLUDED
    return scores


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Nq, Ng) scores and (Nq,) target columns -> (Nq,) 0-based rank of each target.

    Ties are resolved pessimistically: a target shares its rank with nothing above it,
    so an equal-scoring distractor counts as ranked before the target.
    """
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores >= target_scores).sum(dim=1) - 1


def recall_at_k(ranks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10, 50), prefix: str = "R") -> dict[str, float]:
    """Percent of queries whose target rank is below k, for each k, keyed f"{prefix}@{k}"."""
    ranks = ranks.to(torch.float64)
    return {f"{prefix}@{k}": float((ranks < k).to(torch.float64).mean() * 100.0) if len(ranks) else 0.0 for k in ks}


def keep_only(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Copy of `scores` with every column where the (Nq, Ng) bool mask `allowed` is False set to -inf.

    Ranking within a subset this way equals filtering the global ranking to the subset
    (CIRR's Recall_subset), since the relative order of the kept columns is unchanged.
    """
    return scores.masked_fill(~allowed, EXCLUDED)


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Nq, Ng) -> values and column indices (Nq, min(k, Ng)), best first, excluded columns dropped last."""
    k = min(k, scores.shape[1])
    return scores.topk(k, dim=1)
