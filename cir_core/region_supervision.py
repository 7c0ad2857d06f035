"""Auxiliary supervision from per-region image labels (training-only heads).

Synthetic benchmarks know what is in every part of an image (the shapes benchmark:
which shape, colour and size sits in each cell of its 3x3 grid). `RegionHead` predicts
those attributes from the vision tokens pooled over each region, so a vision encoder
trained from scratch learns to see the scene much faster than from the retrieval losses
alone. Pooling by location means the tokens need not say *where* they are.

The head is not part of the model checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of an attribute that does not apply (e.g. the colour of an empty cell)


class RegionHead(nn.Module):
    """Vision tokens (B, 1 + P, W) -> one logit set per region and attribute."""

    def __init__(self, width: int, grid: int, classes: tuple[int, ...]):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleList(nn.Linear(width, n) for n in classes)

    def forward(self, vision_features: torch.Tensor) -> list[torch.Tensor]:
        patches = vision_features[:, 1:]  # (B, P, W), class token dropped
        batch, count, width = patches.shape
        side = int(round(count ** 0.5))
        if side * side != count:
            raise ValueError(f"{count} patch tokens do not form a square grid")
        grid = patches.transpose(1, 2).reshape(batch, width, side, side)
        pooled = F.adaptive_avg_pool2d(grid, self.grid).flatten(2).transpose(1, 2)  # (B, R, W)
        pooled = self.norm(pooled)
        return [head(pooled) for head in self.heads]  # each (B, R, classes_a)

    def loss(self, vision_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over attributes (labels (B, R, A), IGNORE where not applicable)."""
        return attribute_loss(self(vision_features), labels)


def attribute_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over attributes of the cross-entropy of logits[a] (B, R, C_a) against labels[..., a] (B, R, A)."""
    losses = []
    for attribute, attribute_logits in enumerate(logits):
        target = labels[..., attribute]
        if (target != IGNORE).any():
            losses.append(F.cross_entropy(attribute_logits.flatten(0, 1).float(), target.flatten(),
                                          ignore_index=IGNORE))
    return torch.stack(losses).mean()

