"""The benchmarks the results sweep (experiments/shapes_sweep.py) trains rows on: per benchmark its
rows, its default data folder and recipe, how a trained row is evaluated on the test split, and
how its splits are read (for the check of the recipe's word table).

Rows of every benchmark go to one docs/results_rows.jsonl, each saying its `benchmark`, so
the names of rows other than the shapes ones (published before the field existed) carry
their benchmark in front.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
MODE_KEY = "model.overrides.query_mode"  # cir train's dotted key of the query mode


@dataclass(frozen=True)
class SweepRow:
    """One trained row: the recipe plus `overrides` (cir train's dotted keys), at one seed."""

    name: str  # unique across benchmarks, e.g. "sprc/seed1" or "scenes3d/sprc/seed1"
    group: str  # rows of one group differ only in their seed
    description: str  # what the results table calls it
    overrides: dict[str, str] = field(default_factory=dict)
    seed: int = 0


MODE_DESCRIPTIONS = {
    "image_prompt": "image prompt (SPRC's two passes, the prompt without the caption)",
    "static_prompt": "static learned prompt (BLIP4CIR+Bi-like)",
    "pseudo_word": "pseudo-word (Pic2Word/SEARLE-like)",
    "late_fusion": "late fusion (parameter-free sum of the trained encoders' vectors)",
}


def mode_variant(mode: str) -> tuple[str, dict[str, str]]:
    """(description, overrides) of a row that changes only the recipe's query mode."""
    return MODE_DESCRIPTIONS[mode], {MODE_KEY: f'"{mode}"'}


@dataclass(frozen=True)
class SweepBenchmark:
    """What the sweep needs to know of one benchmark."""

    name: str  # the dataset kind its recipe trains on, and the rows' "benchmark"
    data: Path  # default data folder
    config: Path  # default recipe
    variants: dict[str, tuple[str, dict[str, str]]]  # group -> (description, overrides of the recipe)
    seeded_groups: tuple[str, ...]  # groups trained at every seed of SEEDS; the others at seed 0
    name_prefix: str  # in front of each row's name
    evaluate: Callable[[Any, Path, int, int], dict]  # (model, data, max test queries, batch size) -> report
    read_split: Callable[[Path, str], Any]  # (data, split name) -> TripletSplit

    def row(self, group: str, seed: int = 0) -> SweepRow:
        description, overrides = self.variants[group]
        return SweepRow(f"{self.name_prefix}{group}/seed{seed}", group, description, overrides, seed)

    @property
    def rows(self) -> list[SweepRow]:
        """Priority order: if a deadline stops the sweep, the seeds of the central comparison are done."""
        return ([self.row(group, seed) for seed in SEEDS for group in self.seeded_groups]
                + [self.row(group) for group in self.variants if group not in self.seeded_groups])

    @property
    def rows_by_name(self) -> dict[str, SweepRow]:
        return {row.name: row for row in self.rows}


def evaluate_shapes_row(model, data: Path, max_queries: int, batch_size: int) -> dict:
    from cir_core.data.shapes import read_shapes_scenes, read_shapes_split
    from cir_core.data.triplets import subsample
    from cir_core.evaluation.shapes import evaluate_shapes

    split = subsample(read_shapes_split(data, "test"), max_queries)
    return evaluate_shapes(model, split, batch_size=batch_size, progress=False,
                           scenes=read_shapes_scenes(data)).to_dict()


def evaluate_scenes3d_row(model, data: Path, max_queries: int, batch_size: int) -> dict:
    """`cir eval scenes3d`'s report (recall, per group, misses by kind) and the gallery's size. The
    prompt's faithfulness is left out: only some query modes have a prompt, and rows compare alike."""
    from cir_core.data.triplets import subsample
    from cir_core.evaluation.scenes3d import evaluate_scenes3d, read_scenes3d_for_eval

    split, views = read_scenes3d_for_eval(data, "test")
    split = subsample(split, max_queries)
    report = evaluate_scenes3d(model, split, views, batch_size=batch_size, progress=False, prompt=False)
    return {**report.summary, "gallery_size": len(split.gallery)}


def read_shapes(data: Path, split: str):
    from cir_core.data.shapes import read_shapes_split

    return read_shapes_split(data, split)


def read_scenes3d(data: Path, split: str):
    from cir_core.data.scenes3d.read import read_scenes3d_split

    return read_scenes3d_split(data, split)


SHAPES = SweepBenchmark(
    name="shapes", data=Path("data/shapes"), config=ROOT / "configs" / "shapes_mini.json",
    variants={
        "sprc": ("SPRC (Q=8, align 0.4)", {}),  # the recipe itself
        **{mode: mode_variant(mode) for mode in ("static_prompt", "pseudo_word", "late_fusion")},
        "prompt_4": ("SPRC, prompt length 4", {"model.overrides.qformer.num_query_tokens": "4"}),
        "prompt_16": ("SPRC, prompt length 16", {"model.overrides.qformer.num_query_tokens": "16"}),
        "prompt_32": ("SPRC, prompt length 32", {"model.overrides.qformer.num_query_tokens": "32"}),
        "align_0": ("SPRC, alignment weight 0", {"model.overrides.loss.align_weight": "0.0"}),
        "align_0.8": ("SPRC, alignment weight 0.8", {"model.overrides.loss.align_weight": "0.8"}),
        "align_1.0": ("SPRC, alignment weight 1.0", {"model.overrides.loss.align_weight": "1.0"}),
    },
    seeded_groups=("sprc", "static_prompt"), name_prefix="",
    evaluate=evaluate_shapes_row, read_split=read_shapes)

# The paper's question on the 3D benchmark: SPRC against a prompt that never reads the caption, a
# static prompt and the parameter-free sum, three seeds each; the pseudo-word at one.
SCENES3D = SweepBenchmark(
    name="scenes3d", data=Path("data/scenes3d"), config=ROOT / "configs" / "scenes3d_mini.json",
    variants={"sprc": ("SPRC", {}),
              **{mode: mode_variant(mode) for mode in ("image_prompt", "static_prompt", "late_fusion", "pseudo_word")}},
    seeded_groups=("sprc", "image_prompt", "static_prompt", "late_fusion"), name_prefix="scenes3d/",
    evaluate=evaluate_scenes3d_row, read_split=read_scenes3d)

BENCHMARKS = {benchmark.name: benchmark for benchmark in (SHAPES, SCENES3D)}
