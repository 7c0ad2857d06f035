"""The datasets this code knows: one `DatasetSpec` each (see `cir_core.data.spec`).

    source = open_source("cirr", "/data/cirr_dataset", split="val")
    items = source.gallery_items()          # what to index
    source.groups(source.split.triplets[0])  # ("view angle", "count")

Adding a dataset is writing its module with a `SPEC` and listing it here.
"""
from __future__ import annotations

from pathlib import Path

from cir_core.data import cirr, fashioniq, shapes_spec
from cir_core.data.scenes3d import spec as scenes3d_spec
from cir_core.data.spec import BenchmarkSource, DatasetSpec

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    shapes_spec.SPEC, cirr.SPEC, fashioniq.SPEC, scenes3d_spec.SPEC)}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of `name`; ValueError listing the known datasets otherwise."""
    spec = DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return spec


def open_source(dataset: str, data_root: str | Path, split: str | None = None, category: str | None = None,
                check_images: bool = True) -> BenchmarkSource:
    """The `split` of `dataset` under `data_root` (ValueError / FileNotFoundError with a one-line message)."""
    spec = dataset_spec(dataset)
    split = split or spec.default_split
    if split not in spec.splits:
        raise ValueError(f"unknown {dataset} split {split!r}; choose from {', '.join(spec.splits)}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a folder")
    source = spec.open(root.resolve(), split, category or None, check_images)
    if not source.split.gallery:
        raise ValueError(f"{source.name} has an empty gallery")
    return source
