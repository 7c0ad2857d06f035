"""The view-angle group against hand labels of CIRR val captions (docs/labels/), and its
phrases on captions worked by hand."""
import json
from pathlib import Path

import pytest

from cir_core.data.query_groups import VIEW_ANGLE, keyword_groups

LABELS = Path(__file__).parent.parent / "docs" / "labels" / "cirr_val_viewpoint.jsonl"


def weighted_precision_recall(rows) -> tuple[float, float]:
    """Precision and recall of the view-angle group over the population the rows were drawn
    from: each row counts its inverse inclusion probability (`weight`)."""
    true_positive = false_positive = false_negative = 0.0
    for row in rows:
        predicted = VIEW_ANGLE in keyword_groups(row["caption"])
        if predicted and row["viewpoint"]:
            true_positive += row["weight"]
        elif predicted:
            false_positive += row["weight"]
        elif row["viewpoint"]:
            false_negative += row["weight"]
    return true_positive / (true_positive + false_positive), true_positive / (true_positive + false_negative)


def test_labels_are_a_stratified_sample_of_cirr_val():
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()]
    assert len(rows) >= 300 and len({row["pairid"] for row in rows}) == len(rows)
    assert sum(row["drawn"] == "uniform" for row in rows) == 300
    for stratum, size in (("candidate", 1483), ("rest", 2698)):  # the strata's sizes in CIRR val
        weights = {row["weight"] for row in rows if row["stratum"] == stratum}
        count = sum(row["stratum"] == stratum for row in rows)
        assert len(weights) == 1 and weights.pop() * count == pytest.approx(size, abs=0.05)
    assert sum(row["viewpoint"] for row in rows) >= 50


def test_view_angle_group_has_the_documented_precision_and_recall():
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()]
    precision, recall = weighted_precision_recall(rows)
    assert precision >= 0.8 and recall >= 0.7, (precision, recall)


def test_weighting_counts_each_row_by_its_weight():
    rows = [{"caption": "a side view of the car", "viewpoint": True, "weight": 3.0},  # true positive
            {"caption": "a dog facing left", "viewpoint": True, "weight": 1.0},  # missed
            {"caption": "zoom out on the cat", "viewpoint": False, "weight": 2.0}]  # false positive
    assert weighted_precision_recall(rows) == pytest.approx((3 / 5, 3 / 4))


@pytest.mark.parametrize("caption", [
    "Look at the room from above.", "Show the side view of the animal", "Change to a close-up of fruit",
    "It is a closer shot and the flowers are missing", "Zoom out a bit", "Take a far away shot of houses",
    "Another angle too", "Shows the back side of a similar car", "More focused on the gorilla's face",
    "show it from the left side", "a close  up of two dogs",
])
def test_camera_changes_are_in_the_group(caption):
    assert VIEW_ANGLE in keyword_groups(caption)


@pytest.mark.parametrize("caption", [
    "Two women side by side in front of a building", "A dog facing left", "Dogs stand behind the fence",
    "It is closer to the water's edge", "photograph taken same angle", "more perpendicular angles",
    "Focus on one monkey", "put it outside",
])
def test_positions_and_poses_are_not(caption):
    assert VIEW_ANGLE not in keyword_groups(caption)
