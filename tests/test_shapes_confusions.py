"""Kinds of top-1 confusion on the shapes benchmark, from hand-made scene labels."""
import pytest

from cir_core.data.shapes_scene import SceneObject, ShapesScene
from cir_core.data.triplets import Triplet
from cir_core.evaluation.shapes_confusions import confusion_kind, top1_confusions

RED_CIRCLE = SceneObject(0, 0, "circle", "red", "small")
BLUE_SQUARE = SceneObject(1, 1, "square", "blue", "large")
TARGET = ShapesScene((RED_CIRCLE, BLUE_SQUARE))
MOVED = ShapesScene((SceneObject(2, 2, "circle", "red", "small"), BLUE_SQUARE))
RECOLOURED = ShapesScene((SceneObject(0, 0, "circle", "green", "small"), BLUE_SQUARE))
FEWER = ShapesScene((BLUE_SQUARE,))
BOTH = ShapesScene((SceneObject(2, 2, "circle", "green", "small"), BLUE_SQUARE))


def test_each_kind_of_confusion():
    assert confusion_kind(TARGET, MOVED) == "position"
    assert confusion_kind(TARGET, RECOLOURED) == "attribute"
    assert confusion_kind(TARGET, FEWER) == "count"
    assert confusion_kind(TARGET, BOTH) == "other"
    swapped = ShapesScene((SceneObject(0, 0, "square", "blue", "large"), SceneObject(1, 1, "circle", "red", "small")))
    assert confusion_kind(TARGET, swapped) == "position"  # two objects trading places
    with pytest.raises(ValueError, match="not a confusion"):
        confusion_kind(TARGET, ShapesScene((BLUE_SQUARE, RED_CIRCLE)))


def test_counts_only_misses_and_checks_its_input():
    scenes = {s.id: s for s in (TARGET, MOVED, RECOLOURED, FEWER, BOTH)}
    triplets = [Triplet(pairid=i, reference=FEWER.id, caption="x", target=TARGET.id) for i in range(5)]
    first = [TARGET.id, MOVED.id, MOVED.id, RECOLOURED.id, BOTH.id]
    assert top1_confusions(triplets, first, scenes) == {"position": 2, "attribute": 1, "count": 0, "other": 1}
    with pytest.raises(ValueError, match="4 first results for 5 queries"):
        top1_confusions(triplets, first[:4], scenes)
    with pytest.raises(ValueError, match="no scene label"):
        top1_confusions(triplets, first[:4] + ["elsewhere"], scenes)
