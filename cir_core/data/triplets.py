"""The one triplet dataset type shared by every benchmark (shapes, CIRR, FashionIQ)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Triplet:
    """One composed-retrieval query: reference image + relative caption -> target image."""

    pairid: int | str  # id of the query, unique within its split
    reference: str  # image id of the reference
    caption: str  # relative caption used at evaluation (already joined, e.g. FashionIQ "c1 and c2")
    target: str | None = None  # image id of the target; None for test splits without targets
    edit: str | None = None  # edit type or category, for per-type metrics
    caption_variants: tuple[str, ...] = ()  # training-time alternatives, one drawn per use (FashionIQ)
    extras: dict[str, Any] = field(default_factory=dict)  # protocol data (e.g. CIRR subset members)

    def training_caption(self, rng: random.Random) -> str:
        return rng.choice(self.caption_variants) if self.caption_variants else self.caption


@dataclass
class TripletSplit:
    """A split: its queries, where each image lives, and the gallery ranked at evaluation."""

    name: str  # e.g. "shapes/test", "cirr/val", "fashioniq-dress/val"
    triplets: list[Triplet]
    image_paths: dict[str, Path]  # image id -> image file
    gallery: list[str]  # image ids ranked at evaluation, in a fixed order
    exclude_reference: bool = True  # whether a query's reference is removed from its own ranking
    region_labels: dict[str, Any] | None = None  # optional image id -> (regions, attributes) long labels
    region_grid: int = 0  # regions form a region_grid x region_grid grid over the image
    region_classes: tuple[int, ...] = ()  # number of classes of each labelled attribute
    image_captions: dict[str, str] | None = None  # optional image id -> a text describing the image

    def __len__(self) -> int:
        return len(self.triplets)

    def path(self, image_id: str) -> Path:
        try:
            return self.image_paths[image_id]
        except KeyError:
            raise KeyError(f"{self.name}: no image file known for id {image_id!r}") from None

    def missing_images(self) -> list[str]:
        """Ids whose file does not exist (readers report these instead of skipping silently)."""
        return sorted(image_id for image_id, path in self.image_paths.items() if not Path(path).is_file())


def merge_splits(parts: list[TripletSplit], name: str) -> TripletSplit:
    """Concatenate splits for joint training (pairids are prefixed to stay unique)."""
    triplets, paths, gallery = [], {}, []
    for part in parts:
        for t in part.triplets:
            triplets.append(Triplet(f"{part.name}:{t.pairid}", t.reference, t.caption, t.target, t.edit,
                                    t.caption_variants, t.extras))
        paths.update(part.image_paths)
        gallery.extend(part.gallery)
    return TripletSplit(name, triplets, paths, gallery, parts[0].exclude_reference if parts else True)


def subsample(split: TripletSplit, limit: int) -> TripletSplit:
    """At most `limit` queries (a fixed random choice), same gallery; 0 keeps all."""
    if not limit or len(split.triplets) <= limit:
        return split
    chosen = sorted(random.Random(0).sample(range(len(split.triplets)), limit))
    return TripletSplit(split.name, [split.triplets[i] for i in chosen], split.image_paths, split.gallery,
                        split.exclude_reference)
