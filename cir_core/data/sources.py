"""The datasets (shapes, CIRR, FashionIQ): one registry of everything the code knows about each.

`DATASETS` maps a dataset's name to its `DatasetKind`: how to serve a split (`open`, a
`BenchmarkSource`), how to train on it (`read_split`, `training_extras`) and how to score a
model on it (`read_validation`, `evaluate`, `headline_metric`). The app, `cir build-index`
and the training loop reach a dataset through it only; adding a dataset is adding an entry.

A `BenchmarkSource` is one split of one benchmark, ready for an app or a tool that
ranks a gallery: the gallery's images with ids (`gallery_items`), the queries with
pairid, reference, caption and target (`split.triplets`), and the groups each query
belongs to (`groups`), for recall per group in failure inspection.

    source = open_source("cirr", "/data/cirr_dataset", split="val")
    items = source.gallery_items()          # what to index
    source.groups(source.split.triplets[0])  # ("view angle", "count")
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cir_core.data.fashioniq import FASHIONIQ_CATEGORIES
from cir_core.data.query_groups import VIEW_ANGLE, keyword_groups
from cir_core.data.triplets import Triplet, TripletSplit, merge_splits, subsample
from cir_core.index_build import GalleryItem

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from cir_core.model import SPRCModel
    from cir_core.train_config import TrainConfig

@dataclass
class BenchmarkSource:
    """One split of a labelled benchmark: its gallery, its queries and their groups."""

    dataset: str  # registry name: "shapes", "cirr" or "fashioniq"
    split: TripletSplit  # queries (triplets) and the gallery they are ranked against
    grouping: Callable[[Triplet], tuple[str, ...]]  # the groups of one query
    first_groups: tuple[str, ...] = ()  # groups listed first (the view-angle ones)
    captions: dict[str, str] = field(default_factory=dict)  # gallery id -> text describing the image, when known
    labels: dict[str, str] = field(default_factory=dict)  # gallery id -> machine-readable label (e.g. scene JSON)

    @property
    def name(self) -> str:
        """E.g. "cirr/val", "shapes/test", "fashioniq/val"."""
        return self.split.name

    @property
    def queries(self) -> list[Triplet]:
        """The queries whose target is known (test splits without targets have none)."""
        return [t for t in self.split.triplets if t.target is not None]

    def groups(self, triplet: Triplet) -> tuple[str, ...]:
        return self.grouping(triplet)

    def group_names(self) -> list[str]:
        """Every group some query belongs to, the `first_groups` first, then alphabetically."""
        names = {name for triplet in self.queries for name in self.groups(triplet)}
        first = {name: position for position, name in enumerate(self.first_groups)}
        return sorted(names, key=lambda name: (first.get(name, len(first)), name))

    def gallery_items(self) -> list[GalleryItem]:
        """The images to index, in the split's gallery order."""
        return [GalleryItem(id=image_id, path=str(self.split.path(image_id)), caption=self.captions.get(image_id),
                            label=self.labels.get(image_id)) for image_id in self.split.gallery]

    def caption_texts(self) -> tuple[list[str], list[str | None]]:
        """Texts for a caption bank, with the gallery image each describes: the images' descriptions
        where the benchmark has them (shapes), else the split's relative captions (CIRR, FashionIQ)."""
        if self.captions:
            described = [image_id for image_id in self.split.gallery if self.captions.get(image_id)]
            return [self.captions[image_id] for image_id in described], described
        texts = list(dict.fromkeys(t.caption for t in self.split.triplets if t.caption.strip()))
        return texts, [None] * len(texts)

    def cache_key(self) -> str:
        """Changes whenever the gallery or the queries change (caches of ranks are keyed by it)."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.dataset, self.name, self.split.gallery,
                                  [str(self.split.path(image_id)) for image_id in self.split.gallery],
                                  self.split.exclude_reference]).encode())
        for t in self.split.triplets:
            digest.update(json.dumps([str(t.pairid), t.reference, t.target, t.caption, self.groups(t)]).encode())
        return digest.hexdigest()[:16]


# ---------------------------------------------------------------------- serving
def _open_shapes(data_root: Path, split: str, category: str | None, check_images: bool) -> BenchmarkSource:
    from cir_core.data.shapes import read_shapes_scenes, read_shapes_split
    from cir_core.data.shapes_scene import describe_scene

    if category:
        raise ValueError("--category applies to FashionIQ only")
    triplets = read_shapes_split(data_root, split)
    scenes = read_shapes_scenes(data_root)
    described = {image_id: scenes[image_id] for image_id in triplets.gallery if image_id in scenes}
    captions = {image_id: describe_scene(scene) for image_id, scene in described.items()}
    labels = {image_id: json.dumps(scene.to_dict(), sort_keys=True) for image_id, scene in described.items()}

    def grouping(triplet: Triplet) -> tuple[str, ...]:
        # mirror and rotate change the viewpoint of the whole scene: shapes' view-angle edits
        view = (VIEW_ANGLE,) if triplet.edit in ("mirror", "rotate") else ()
        novel = ("novel",) if triplet.extras.get("novel") else ()
        return (*view, triplet.edit or "", *novel)

    return BenchmarkSource("shapes", triplets, grouping, first_groups=(VIEW_ANGLE, "mirror", "rotate"),
                           captions=captions, labels=labels)


def _open_cirr(data_root: Path, split: str, category: str | None, check_images: bool) -> BenchmarkSource:
    from cir_core.data.cirr import read_cirr

    if category:
        raise ValueError("--category applies to FashionIQ only")
    return BenchmarkSource("cirr", read_cirr(data_root, split, check_images=check_images),
                           lambda triplet: keyword_groups(triplet.caption), first_groups=(VIEW_ANGLE,))


def _open_fashioniq(data_root: Path, split: str, category: str | None, check_images: bool) -> BenchmarkSource:
    """One category, or all three in one gallery (their union) with the category as a group.

    The official protocol ranks each category's gallery on its own (`cir eval fashioniq`);
    the union lets one app serve every category, so ranks there can be lower.
    """
    from cir_core.data.fashioniq import read_fashioniq

    if category is not None and category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"unknown FashionIQ category {category!r}; choose from {', '.join(FASHIONIQ_CATEGORIES)}")
    categories = (category,) if category else FASHIONIQ_CATEGORIES
    parts = [read_fashioniq(data_root, name, split, check_images=check_images) for name in categories]
    triplets = [Triplet(pairid=f"{name}-{t.pairid}", reference=t.reference, caption=t.caption, target=t.target,
                        edit=name, caption_variants=t.caption_variants)
                for name, part in zip(categories, parts) for t in part.triplets]
    image_paths = {image_id: path for part in parts for image_id, path in part.image_paths.items()}
    gallery = list(dict.fromkeys(image_id for part in parts for image_id in part.gallery))
    merged = TripletSplit(name=f"fashioniq-{category}/{split}" if category else f"fashioniq/{split}",
                          triplets=triplets, image_paths=image_paths, gallery=gallery, exclude_reference=False)
    return BenchmarkSource("fashioniq", merged, lambda triplet: (triplet.edit,) + keyword_groups(triplet.caption),
                           first_groups=FASHIONIQ_CATEGORIES)


# ---------------------------------------------------------------------- training and validation
class TrainingExtras:
    """What a dataset adds to the one training loop beyond its triplets; this base adds nothing.

    A dataset whose labels allow more (shapes: rendered look-alike negatives, more draws of
    rare triplets, a per-region auxiliary loss) returns a subclass from its
    `DatasetKind.training_extras`; the trainer calls these methods and nothing else.
    """

    def triplet_repeats(self) -> list[int] | None:
        """Draws per pass over the data of each training triplet (None: once each)."""
        return None

    def extra_negatives(self, triplets: list[Triplet], rng: random.Random) -> list[Image.Image]:
        """Images ranked against this batch's queries besides its targets (none of them a match)."""
        return []

    def parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of training-only heads (not saved with the model)."""
        return []

    def auxiliary_losses(self, reference: torch.Tensor, target: torch.Tensor, triplets: list[Triplet]
                         ) -> list[tuple[str, float, torch.Tensor]]:
        """(name, weight, loss) terms added to the model's loss, from the batch's vision features
        (B, T, W) of its references and targets."""
        return []

    def state_dict(self) -> dict:
        """What `--resume` needs (entries of the trainer's state file)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` saved, from the trainer's state file."""


def _no_extras(config: TrainConfig, model: SPRCModel, split: TripletSplit) -> TrainingExtras:
    return TrainingExtras()


def _one_validation_split(config: TrainConfig) -> TripletSplit:
    data = config.data
    return subsample(DATASETS[data.kind].read_split(config, data.val_split), data.val_max_queries)


def _read_shapes(config: TrainConfig, split: str, for_training: bool = False, descriptions: bool = False
                 ) -> TripletSplit:
    from cir_core.data.shapes_training import read_training_split

    return read_training_split(config, split, for_training, descriptions)


def _shapes_extras(config: TrainConfig, model: SPRCModel, split: TripletSplit) -> TrainingExtras:
    from cir_core.data.shapes_training import ShapesTrainingExtras

    return ShapesTrainingExtras(config, model, split)


def _evaluate_shapes(model: SPRCModel, validation: TripletSplit):
    from cir_core.evaluation.shapes import evaluate_shapes

    return evaluate_shapes(model, validation, progress=False)


def _read_cirr(config: TrainConfig, split: str, for_training: bool = False, descriptions: bool = False
               ) -> TripletSplit:
    from cir_core.data.cirr import read_cirr

    return read_cirr(config.data.root, split)


def _evaluate_cirr(model: SPRCModel, validation: TripletSplit):
    from cir_core.evaluation.cirr import evaluate_cirr

    return evaluate_cirr(model, validation, progress=False)


def _read_fashioniq(config: TrainConfig, split: str, for_training: bool = False, descriptions: bool = False
                    ) -> TripletSplit:
    """The categories of `config.data.categories`, trained jointly."""
    from cir_core.data.fashioniq import read_fashioniq

    parts = [read_fashioniq(config.data.root, category, split) for category in config.data.categories]
    return merge_splits(parts, f"fashioniq/{split}")


def _fashioniq_validation(config: TrainConfig) -> dict[str, TripletSplit]:
    """One split per category: each is ranked against its own gallery, as the official protocol does."""
    from cir_core.data.fashioniq import read_fashioniq

    data = config.data
    return {c: subsample(read_fashioniq(data.root, c, data.val_split), data.val_max_queries)
            for c in data.categories}


def _evaluate_fashioniq(model: SPRCModel, validation: dict[str, TripletSplit]):
    from cir_core.evaluation.fashioniq import evaluate_fashioniq

    return evaluate_fashioniq(model, validation, progress=False)


# ---------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class DatasetKind:
    """Everything the code knows about one dataset: serving it, training on it and scoring a model on it."""

    open: Callable[[Path, str, str | None, bool], BenchmarkSource]  # (data_root, split, category, check_images)
    splits: tuple[str, ...]  # splits that can be served
    default_split: str  # the split served when none is named
    # (config, split, for_training, descriptions) -> the split `cir train` reads; `descriptions`
    # asks for each image's description (loss.description_weight), where the dataset has them
    read_split: Callable[[TrainConfig, str, bool, bool], TripletSplit]
    read_validation: Callable[[TrainConfig], Any]  # config -> what `evaluate` takes (the validation queries)
    evaluate: Callable[[SPRCModel, Any], Any]  # (model, validation) -> the dataset's report (with to_dict())
    headline_metric: str  # the flat report entry that picks the best checkpoint (higher is better)
    # (config, model, training split) -> extra negatives, sampling weights, auxiliary losses
    training_extras: Callable[[TrainConfig, SPRCModel, TripletSplit], TrainingExtras] = _no_extras


DATASETS: dict[str, DatasetKind] = {
    "shapes": DatasetKind(open=_open_shapes, splits=("train", "val", "test"), default_split="test",
                          read_split=_read_shapes, read_validation=_one_validation_split,
                          evaluate=_evaluate_shapes, headline_metric="recall/R@1", training_extras=_shapes_extras),
    "cirr": DatasetKind(open=_open_cirr, splits=("train", "val", "test1"), default_split="val",
                        read_split=_read_cirr, read_validation=_one_validation_split,
                        evaluate=_evaluate_cirr, headline_metric="average"),
    "fashioniq": DatasetKind(open=_open_fashioniq, splits=("train", "val", "test"), default_split="val",
                             read_split=_read_fashioniq, read_validation=_fashioniq_validation,
                             evaluate=_evaluate_fashioniq, headline_metric="average"),
}


def open_source(dataset: str, data_root: str | Path, split: str | None = None, category: str | None = None,
                check_images: bool = True) -> BenchmarkSource:
    """The `split` of `dataset` under `data_root` (ValueError / FileNotFoundError with a one-line message)."""
    kind = DATASETS.get(dataset)
    if kind is None:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    split = split or kind.default_split
    if split not in kind.splits:
        raise ValueError(f"unknown {dataset} split {split!r}; choose from {', '.join(kind.splits)}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a folder")
    source = kind.open(root.resolve(), split, category or None, check_images)
    if not source.split.gallery:
        raise ValueError(f"{source.name} has an empty gallery")
    return source
