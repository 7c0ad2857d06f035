"""What the repository ships for the app to serve without --data-root: per benchmark, its embedded
model, where its test split lies, the gallery's index seed and the curated examples.

Paths are relative to the repository (or an exported Space), where the app runs. The app
reads this table for its defaults and `cir space-export` for what the default demo is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShippedBenchmark:
    """A benchmark the app serves without --data-root: its embedded model, where its test split
    may lie, the gallery's vectors as that model encodes them (a fresh machine answers without
    encoding the gallery first; used only when the weights fingerprint and the images match, see
    cir_core.index_seed) and the curated example queries."""

    model: str
    folders: tuple[Path, ...]
    index_seed: Path
    examples: Path
    make: str  # how to write the folder when none of `folders` exists


SHIPPED = {
    "scenes3d": ShippedBenchmark(
        model="local-dir:checkpoints/scenes3d-mini", folders=(Path("assets/scenes3d"), Path("data/scenes3d")),
        index_seed=Path("checkpoints/scenes3d-mini/gallery_index_seed.npz"),
        examples=Path("assets/examples/scenes3d.json"),
        make="cir data scenes3d --out assets/scenes3d --seed 4242 --train 0 --val 0"),
    "shapes": ShippedBenchmark(
        model="local-dir:checkpoints/shapes-mini", folders=(Path("assets/shapes"), Path("data/shapes")),
        index_seed=Path("checkpoints/shapes-mini/gallery_index_seed.npz"),
        examples=Path("assets/examples/shapes.json"), make="generated once with seed 0"),
}
DEFAULT_DATASET = "scenes3d"


def default_model(dataset: str | None, gallery: str | Path | None = None) -> str:
    """The embedded model for what is served: `dataset`'s, else shapes' for a shapes folder given
    as a plain gallery, else the default benchmark's (also for benchmarks that ship none)."""
    if dataset is None:
        dataset = "shapes" if gallery is not None and (Path(gallery) / "info.json").is_file() else DEFAULT_DATASET
    return SHIPPED.get(dataset, SHIPPED[DEFAULT_DATASET]).model
