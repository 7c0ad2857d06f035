"""What the shapes benchmark adds to the one training loop, and the options that ask for it.

The benchmark knows every image's scene, which no photo benchmark does, so training on it
can also (`data.options` of a training config, read into `ShapesOptions`):

- rank rendered look-alikes against each query besides the batch's targets: a target's
  objects in another layout (`position_negatives`), or the reference edited the same way
  with another outcome (`edit_negatives`);
- draw triplets whose target is one object more often (`lone_target_repeats`): those are
  the rarest scenes and the hardest to retrieve;
- learn to see each cell of the scene grid through an auxiliary loss on the vision
  tokens (`region_weight`).

The shapes `DatasetSpec` hands `ShapesTrainingExtras` to the trainer, which calls it
through the `TrainingExtras` interface only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cir_core.config import _check_float, _check_int
from cir_core.data.shapes import read_shapes_info, read_shapes_scenes, read_shapes_split
from cir_core.data.shapes_negatives import LAYOUT_SPREADS, LookAlikes
from cir_core.data.spec import TrainingExtras
from cir_core.data.triplets import Triplet, TripletSplit
from cir_core.region_supervision import RegionHead


@dataclass(frozen=True)
class ShapesOptions:
    """Training options that need the shapes benchmark's scene labels."""

    position_negatives: int = 0  # rendered negatives per batch: a target's objects in another layout
    edit_negatives: int = 0  # rendered negatives per batch: a reference edited the same way, another outcome
    position_negative_spread: str = "even"  # who gets the layout ones: "even" or "inverse_objects" (1/n per n objects)
    lone_target_repeats: int = 1  # draws per pass of each triplet whose target is one object (1 = once)
    region_weight: float = 0.0  # weight of the auxiliary per-region vision loss (0 = off)

    def validate(self, where: str = "data.options") -> None:
        """ValueError naming the first option out of its range."""
        for name in ("position_negatives", "edit_negatives"):
            _check_int(getattr(self, name), f"{where}.{name}", 0)
        _check_int(self.lone_target_repeats, f"{where}.lone_target_repeats", 1)
        _check_float(self.region_weight, f"{where}.region_weight", 0)
        if self.position_negative_spread not in LAYOUT_SPREADS:
            raise ValueError(f"{where}.position_negative_spread must be one of {', '.join(LAYOUT_SPREADS)}, "
                             f"got {self.position_negative_spread!r}")


def read_training_split(root: Path, split: str, options: ShapesOptions, for_training: bool = False,
                        descriptions: bool = False) -> TripletSplit:
    """A shapes split, with region labels when training asks for the region loss."""
    return read_shapes_split(root, split, with_region_labels=for_training and options.region_weight > 0,
                             with_descriptions=descriptions)


class ShapesTrainingExtras(TrainingExtras):
    """Look-alike negatives, repeats of one-object targets and the region loss, as the options ask."""

    def __init__(self, options: ShapesOptions, root: Path, model: Any, split: TripletSplit, device: str):
        self.options = options
        scenes = None
        self.look_alikes: LookAlikes | None = None
        if options.position_negatives or options.edit_negatives:
            scenes = read_shapes_scenes(root)
            self.look_alikes = LookAlikes(scenes, int(read_shapes_info(root)["image_size"]))
        self.region_labels = split.region_labels
        self.region_head: RegionHead | None = None
        if options.region_weight > 0:
            vision = model.config.vision
            self.region_head = RegionHead(vision.hidden_size, split.region_grid, split.region_classes).to(device)
        self.device = device
        self.repeats: list[int] | None = None
        if options.lone_target_repeats > 1:
            scenes = scenes if scenes is not None else read_shapes_scenes(root)
            repeats = options.lone_target_repeats
            self.repeats = [repeats if t.target is not None and len(scenes[t.target].objects) == 1 else 1
                            for t in split.triplets]

    def triplet_repeats(self) -> list[int] | None:
        return self.repeats

    def extra_negatives(self, triplets: list[Triplet], rng: random.Random) -> list[Image.Image]:
        """`position_negatives` scenes with a target's objects in another layout, then `edit_negatives`
        references edited the same way with another outcome; none is a batch target or another look-alike."""
        if self.look_alikes is None:
            return []
        targets = [t.target for t in triplets]
        avoid = set(targets)
        scenes = self.look_alikes.sample(targets, self.options.position_negatives, rng, avoid,
                                         spread=self.options.position_negative_spread)
        if self.options.edit_negatives:
            scenes += self.look_alikes.sample_edits(triplets, self.options.edit_negatives, rng, avoid)
        return self.look_alikes.render(scenes)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.region_head.parameters()) if self.region_head is not None else []

    def auxiliary_losses(self, reference: torch.Tensor, target: torch.Tensor, triplets: list[Triplet]
                         ) -> list[tuple[str, float, torch.Tensor]]:
        if self.region_head is None:
            return []
        ids = [t.reference for t in triplets] + [t.target for t in triplets]
        labels = torch.stack([self.region_labels[i] for i in ids]).to(self.device)  # (2B, R, A)
        region = self.region_head.loss(torch.cat([reference, target]), labels)
        return [("region", self.options.region_weight, region)]

    def state_dict(self) -> dict:
        return {"region_head": self.region_head.state_dict() if self.region_head is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.region_head is not None and state.get("region_head") is not None:
            self.region_head.load_state_dict(state["region_head"])
