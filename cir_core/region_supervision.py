"""Auxiliary supervision from per-region image labels (training-only heads).

Synthetic benchmarks know what is in every part of an image (the shapes benchmark:
which shape, colour and size sits in each cell of its 3x3 grid). Two kinds of small
heads predict those attributes:

- `RegionHead` reads the vision tokens pooled over each region, so a vision encoder
  trained from scratch learns to see the scene much faster than from the retrieval
  losses alone. Pooling by location means the tokens need not say *where* they are.
- `SceneHeads` read the retrieval vectors themselves: the target's query vectors and
  the composed query must each decode the whole target scene, cell by cell. This makes
  both sides carry object positions, which in-batch contrast rarely asks for (a batch
  seldom holds two scenes that differ only by where an object sits, while a gallery
  does).

No head is part of the model checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of an attribute that does not apply (e.g. the colour of an empty cell)


class RegionHead(nn.Module):
    """Vision tokens (B, 1 + P, W) -> one logit set per region and attribute [+ each patch's own place].

    With `locate_side` (patches per image side), every patch token must also say which
    row and column of the patch grid it comes from. Pooling by location lets tokens
    forget where they are, but the Q-Former reads them by content (cross-attention), so
    an object's position reaches the retrieval vectors only if its tokens carry it.
    """

    def __init__(self, width: int, grid: int, classes: tuple[int, ...], locate_side: int = 0):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleList(nn.Linear(width, n) for n in classes)
        self.locate_side = locate_side
        self.locate = nn.Linear(width, 2 * locate_side) if locate_side else None

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

    def location_loss(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every patch token's predicted grid row and column."""
        patches = vision_features[:, 1:]
        side = self.locate_side
        if patches.shape[1] != side * side:
            raise ValueError(f"{patches.shape[1]} patch tokens, but the head locates a {side}x{side} grid")
        logits = self.locate(self.norm(patches)).float()  # (B, P, 2 * side)
        index = torch.arange(side * side, device=patches.device)
        rows, cols = (index // side).expand(patches.shape[0], -1), (index % side).expand(patches.shape[0], -1)
        return 0.5 * (F.cross_entropy(logits[..., :side].flatten(0, 1), rows.flatten())
                      + F.cross_entropy(logits[..., side:].flatten(0, 1), cols.flatten()))

    def loss(self, vision_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over attributes (labels (B, R, A), IGNORE where not applicable) [+ location]."""
        attributes = attribute_loss(self(vision_features), labels)
        if self.locate is None:
            return attributes
        return attributes + self.location_loss(vision_features)


def attribute_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over attributes of the cross-entropy of logits[a] (B, R, C_a) against labels[..., a] (B, R, A)."""
    losses = []
    for attribute, attribute_logits in enumerate(logits):
        target = labels[..., attribute]
        if (target != IGNORE).any():
            losses.append(F.cross_entropy(attribute_logits.flatten(0, 1).float(), target.flatten(),
                                          ignore_index=IGNORE))
    return torch.stack(losses).mean()


class SceneDecoder(nn.Module):
    """One vector per image (any trailing shape, flattened) -> per-region logits of each attribute."""

    def __init__(self, in_features: int, regions: int, classes: tuple[int, ...], hidden: int = 512):
        super().__init__()
        self.regions, self.classes = regions, tuple(classes)
        self.mlp = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.GELU(),
                                 nn.Linear(hidden, regions * sum(self.classes)))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        logits = self.mlp(features.flatten(1)).view(features.shape[0], self.regions, sum(self.classes))
        return list(logits.split(self.classes, dim=-1))


class SceneHeads(nn.Module):
    """Decode the target scene from the composed query (B, D) and from the target vectors (B, Q, D)."""

    def __init__(self, embed_dim: int, num_query_tokens: int, grid: int, classes: tuple[int, ...]):
        super().__init__()
        regions = grid * grid
        self.from_query = SceneDecoder(embed_dim, regions, classes)
        self.from_target = SceneDecoder(num_query_tokens * embed_dim, regions, classes)

    def loss(self, query: torch.Tensor, targets: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
        """Mean of both decoders' attribute losses; target_labels (B, R, A) with IGNORE where not applicable."""
        return 0.5 * (attribute_loss(self.from_query(query), target_labels)
                      + attribute_loss(self.from_target(targets), target_labels))
