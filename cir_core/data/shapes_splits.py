"""Sampling the splits of the shapes benchmark in memory: queries and galleries, as scene labels.

Each split draws from its own random stream (seeded by the seed and the split name), so
changing one split's size leaves the other splits' random streams alone. A (reference,
target) pair used by an earlier split (train, then val, then test) is never reused; that
rare skip is the only way one split's sampling can depend on another's.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

from tqdm.auto import tqdm

from cir_core.data.shapes_edits import EDIT_TYPES, edit_scene, perturb_one_attribute
from cir_core.data.shapes_scene import ShapesScene, sample_scene

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Draws without a new scene or query before giving up (only tiny scene spaces get there).
_MAX_STALE_DRAWS = 10_000
# Gallery scenes a dataset may plan: 100 times what the default counts plan, some 40 GB of
# 96-pixel PNGs and hours of sampling; more is a mistaken count rather than a benchmark.
MAX_IMAGES = 10_000_000


@dataclass
class ShapesCounts:
    """How many queries and gallery scenes each split gets."""

    train: int = 24000  # train triplets
    val: int = 1000  # val triplets
    test: int = 2000  # test triplets
    train_edits_per_reference: int = 4  # different edits of each train reference (val/test use 1)
    distractor_fraction: float = 0.2  # extra random gallery scenes, as a fraction of the split's own scenes
    hard_negative_fraction: float = 0.5  # share of queries adding a scene one attribute away from the target

    def triplets(self, split: str) -> int:
        return {"train": self.train, "val": self.val, "test": self.test}[split]

    def planned_images(self) -> int:
        """About how many gallery scenes the splits get: a reference and a target per query at most,
        plus hard negatives and distractors (an upper bound; shared scenes are rendered once)."""
        own = 2 * sum(self.triplets(s) for s in SPLITS)
        return math.ceil(own * (1 + self.hard_negative_fraction + self.distractor_fraction))

    def validate(self) -> None:
        fractions = (self.distractor_fraction, self.hard_negative_fraction)
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) for f in fractions):
            raise ValueError(f"invalid shapes counts: distractor_fraction and hard_negative_fraction must be finite "
                             f"numbers, got {self.distractor_fraction!r} and {self.hard_negative_fraction!r}")
        checks = [
            (all(self.triplets(s) >= 1 for s in SPLITS), "every split needs at least one triplet"),
            (1 <= self.train_edits_per_reference <= 5, "train_edits_per_reference must be within 1..5"),
            (self.distractor_fraction >= 0, "distractor_fraction must be >= 0"),
            (0 <= self.hard_negative_fraction <= 1, "hard_negative_fraction must be within [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid shapes counts: {message}")
        if self.planned_images() > MAX_IMAGES:
            raise ValueError(f"invalid shapes counts: they plan up to {self.planned_images():,} gallery images, more "
                             f"than the {MAX_IMAGES:,} this benchmark writes (fewer triplets or distractors)")


@dataclass(frozen=True)
class ShapesQuery:
    """One planned triplet, as labels."""

    reference: ShapesScene  # the scene the caption edits
    target: ShapesScene  # the scene after the edit
    caption: str  # the relative caption
    edit: str  # edit type, one of EDIT_TYPES
    novel: bool  # involves a held-out combination or phrasing


@dataclass
class ShapesSplitPlan:
    """A split before rendering: its queries and its gallery."""

    name: str  # "train", "val" or "test"
    queries: list[ShapesQuery]  # in pairid order
    gallery: list[ShapesScene]  # every reference and target, distractors and hard negatives, sorted by id


def _split_rng(seed: int, split: str) -> random.Random:
    return random.Random(f"shapes-v1/{seed}/{split}")


def plan_split(split: str, seed: int, counts: ShapesCounts, used_pairs: set[tuple[str, str]],
               progress: bool = True) -> ShapesSplitPlan:
    """Sample one split; adds its (reference id, target id) pairs to `used_pairs`."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; choose from {SPLITS}")
    rng = _split_rng(seed, split)
    train = split == "train"
    edits_per_reference = counts.train_edits_per_reference if train else 1
    wanted = counts.triplets(split)
    queries: list[ShapesQuery] = []
    stale = 0
    with tqdm(total=wanted, desc=f"sampling shapes/{split}", unit="query", disable=not progress) as bar:
        while len(queries) < wanted:
            reference = sample_scene(rng, train=train)
            needed = min(edits_per_reference, wanted - len(queries))
            edits, pairs = [], set()
            for edit_type in rng.sample(EDIT_TYPES, len(EDIT_TYPES)):
                if len(edits) == needed:
                    break
                edit = edit_scene(reference, edit_type, rng, train=train)
                pair = (reference.id, edit.target.id) if edit is not None else None
                if edit is None or pair in used_pairs or pair in pairs:
                    continue
                pairs.add(pair)
                edits.append(ShapesQuery(reference, edit.target, edit.caption, edit.edit_type, edit.novel))
            # A reference gets all its edits or none, so train references have exactly 4 different ones.
            added = len(edits) if len(edits) == needed else 0
            if added:
                used_pairs.update(pairs)
                queries.extend(edits)
            bar.update(added)
            stale = 0 if added else stale + 1
            if stale > _MAX_STALE_DRAWS:
                raise RuntimeError(f"shapes/{split}: could not find {wanted} distinct queries")
    return ShapesSplitPlan(split, queries, _gallery(queries, rng, train, counts))


def _gallery(queries: list[ShapesQuery], rng: random.Random, train: bool, counts: ShapesCounts) -> list[ShapesScene]:
    scenes: dict[str, ShapesScene] = {}
    for query in queries:
        scenes.setdefault(query.reference.id, query.reference)
        scenes.setdefault(query.target.id, query.target)
    own = len(scenes)
    for query in queries:
        if rng.random() < counts.hard_negative_fraction:
            negative = perturb_one_attribute(query.target, rng, train=train)
            scenes.setdefault(negative.id, negative)
    distractors = round(counts.distractor_fraction * own)
    added = stale = 0
    while added < distractors and stale <= _MAX_STALE_DRAWS:
        scene = sample_scene(rng, train=train)
        if scene.id in scenes:
            stale += 1
            continue
        scenes[scene.id] = scene
        added, stale = added + 1, 0
    logger.debug("gallery: %d own scenes, %d distractors, %d total", own, added, len(scenes))
    return [scenes[scene_id] for scene_id in sorted(scenes)]


def plan_splits(seed: int = 0, counts: ShapesCounts | None = None, progress: bool = True) -> dict[str, ShapesSplitPlan]:
    """All three splits, sampled in order train, val, test."""
    counts = counts or ShapesCounts()
    counts.validate()
    used_pairs: set[tuple[str, str]] = set()
    return {split: plan_split(split, seed, counts, used_pairs, progress) for split in SPLITS}
