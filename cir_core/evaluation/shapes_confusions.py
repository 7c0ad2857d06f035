"""What a shapes model confuses: each miss's first result compared with the target's label.

A miss is a query whose first result is not its target. Because labels are symbolic, the
first result can be put in one of four kinds, which says where a model falls short:

- "position": the same objects (shape, colour, size) as the target, some in other cells;
- "attribute": objects in the same cells as the target's, some shape, colour or size differs;
- "count": a different number of objects;
- "other": the same number of objects, with cells and attributes both differing.
"""
from __future__ import annotations

from collections import Counter

from cir_core.data.shapes_scene import ShapesScene
from cir_core.data.triplets import Triplet

CONFUSION_KINDS = ("position", "attribute", "count", "other")


def confusion_kind(target: ShapesScene, retrieved: ShapesScene) -> str:
    """How a wrongly retrieved scene differs from the target (see the module doc); equal scenes are refused."""
    if retrieved == target:
        raise ValueError("the retrieved scene is the target: not a confusion")
    if len(retrieved.objects) != len(target.objects):
        return "count"
    if sorted(o.appearance for o in retrieved.objects) == sorted(o.appearance for o in target.objects):
        return "position"
    if [o.cell for o in retrieved.objects] == [o.cell for o in target.objects]:  # objects are sorted by cell
        return "attribute"
    return "other"


def top1_confusions(triplets: list[Triplet], first_results: list[str],
                    scenes: dict[str, ShapesScene]) -> dict[str, int]:
    """Misses per kind, in CONFUSION_KINDS order; `first_results[i]` is query i's first result."""
    if len(first_results) != len(triplets):
        raise ValueError(f"{len(first_results)} first results for {len(triplets)} queries")
    unknown = sorted({i for t, r in zip(triplets, first_results) for i in (t.target, r) if i not in scenes})
    if unknown:
        raise ValueError(f"{len(unknown)} images have no scene label (first: {unknown[0]!r}); "
                         "are the labels from the same shapes folder?")
    counts = Counter(confusion_kind(scenes[t.target], scenes[r])
                     for t, r in zip(triplets, first_results) if r != t.target)
    return {kind: counts.get(kind, 0) for kind in CONFUSION_KINDS}
