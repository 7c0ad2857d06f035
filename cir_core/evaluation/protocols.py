"""Which evaluator scores a model on a dataset: `DatasetSpec.protocol` names one of these.

Each takes (model, what the dataset's `read_validation` returned) and returns a report
with `to_dict()`; the trainer calls them through this table only.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from cir_core.evaluation.cirr import evaluate_cirr
from cir_core.evaluation.fashioniq import evaluate_fashioniq
from cir_core.evaluation.grouped_recall import evaluate_grouped_recall
from cir_core.evaluation.shapes import evaluate_shapes

EVALUATORS: dict[str, Callable[[Any, Any], Any]] = {
    "shapes": partial(evaluate_shapes, progress=False),
    "cirr": partial(evaluate_cirr, progress=False),
    "fashioniq": partial(evaluate_fashioniq, progress=False),
    "grouped_recall": partial(evaluate_grouped_recall, progress=False),
}


def evaluate_protocol(protocol: str, model, validation):
    """The report of `protocol` for `model` on `validation`."""
    try:
        evaluator = EVALUATORS[protocol]
    except KeyError:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(EVALUATORS)}") from None
    return evaluator(model, validation)
