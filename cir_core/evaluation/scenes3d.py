"""The scenes3d test protocol as `cir eval scenes3d` reports it: recall over all queries and per
group (view angle first), misses by kind, and the prompt's faithfulness to the target's
description; one function, so that the command and a model card print the same figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cir_core.config import PROMPT_MODES
from cir_core.data.scenes3d.misses import MISS_KINDS, miss_classifier
from cir_core.data.scenes3d.plan import GROUP_ORDER
from cir_core.data.scenes3d.read import read_scenes3d_info, read_scenes3d_labels, read_scenes3d_split
from cir_core.data.triplets import TripletSplit
from cir_core.evaluation.grouped_recall import GroupedRecallReport, evaluate_grouped_recall


@dataclass
class Scenes3DEvaluation:
    summary: dict[str, Any]  # what `cir eval scenes3d --json` prints
    report: GroupedRecallReport  # with each query's target rank and first result
    split: TripletSplit


Views = dict[str, tuple[str, str]]  # image id -> (scene id, camera id)


def read_scenes3d_for_eval(data_dir: str | Path, split: str) -> tuple[TripletSplit, Views]:
    """The split with its descriptions, and each image's view; ValueError naming a folder of
    another benchmark before its labels are read, FileNotFoundError for a missing file."""
    read_scenes3d_info(data_dir)
    labels = read_scenes3d_labels(data_dir)
    result = read_scenes3d_split(data_dir, split, with_descriptions=True, labels=labels)
    return result, {image_id: (label["scene"], label["camera"]) for image_id, label in labels.items()}


def evaluate_scenes3d(model, split: TripletSplit, views: Views, batch_size: int = 32, progress: bool = True,
                      query_precision: str = "fp32", gallery_precision: str = "fp32",
                      prompt: bool = True) -> Scenes3DEvaluation:
    """Rank the split (from `read_scenes3d_for_eval`) with `model`; `prompt` adds the faithfulness
    measure (models whose query has a prompt)."""
    report = evaluate_grouped_recall(model, split, batch_size, progress, miss_classifier(views), MISS_KINDS,
                                     query_precision, gallery_precision)
    order = {name: position for position, name in enumerate(GROUP_ORDER)}
    summary = {**report.to_dict(), "query_precision": query_precision, "gallery_precision": gallery_precision}
    summary["per_group"] = dict(sorted(summary["per_group"].items(), key=lambda item: order.get(item[0], len(order))))
    if prompt and model.config.query_mode in PROMPT_MODES:
        from cir_core.evaluation.prompt_faithfulness import described_prompt_faithfulness

        summary["prompt"] = described_prompt_faithfulness(model, split, split.image_captions, None, batch_size,
                                                          progress).to_dict()
    return Scenes3DEvaluation(summary, report, split)
