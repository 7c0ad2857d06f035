"""What every dataset hands the rest of the code: a `DatasetSpec`, and `BenchmarkSource`s to serve.

A dataset module (shapes, CIRR, FashionIQ, scenes3d) exports one `SPEC`: how to serve a
split (`open`, a `BenchmarkSource`), how to read a split for training and validation
(`read_split`, `read_validation`), the options it takes (`options`, a dataclass that
checks them), what it adds to the training loop (`training_extras`) and which evaluation
protocol scores a model on it (`protocol`, a name in `cir_core.evaluation.protocols`).
The registry (`cir_core.data.registry`) lists the specs; the app, `cir build-index` and
the trainer reach a dataset through it only, and nothing here knows a model or a trainer.

A `BenchmarkSource` is one split of one benchmark, ready for an app or a tool that ranks
a gallery: the gallery's images with ids (`gallery_items`), the queries with pairid,
reference, caption and target (`split.triplets`), and the groups each query belongs to
(`groups`), for recall per group in failure inspection.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cir_core.config import build_dataclass
from cir_core.data.triplets import Triplet, TripletSplit, subsample

if TYPE_CHECKING:
    import torch
    from PIL import Image

GALLERY_DESCRIPTIONS = "descriptions of gallery images"  # a caption bank of texts that describe images
OTHER_EDIT_CAPTIONS = "edit captions of other queries in this split"  # a bank of relative captions


@dataclass
class GalleryItem:
    """One image to index: what a dataset (or a folder of images) hands the index."""

    id: str  # unique gallery id
    path: str | Path  # image file
    caption: str | None = None  # free-text caption shown with the image
    label: str | None = None  # free text or JSON text (e.g. a shapes scene)


@dataclass
class BenchmarkSource:
    """One split of a labelled benchmark: its gallery, its queries and their groups."""

    dataset: str  # registry name: "shapes", "cirr", "fashioniq" or "scenes3d"
    split: TripletSplit  # queries (triplets) and the gallery they are ranked against
    grouping: Callable[[Triplet], tuple[str, ...]]  # the groups of one query
    first_groups: tuple[str, ...] = ()  # groups listed first (the view-angle ones)
    captions: dict[str, str] = field(default_factory=dict)  # gallery id -> text describing the image, when known
    labels: dict[str, str] = field(default_factory=dict)  # gallery id -> machine-readable label (e.g. scene JSON)
    # (target id, id ranked first) -> how a miss differs from its target, one of `miss_kinds` (None: not classified)
    classify_miss: Callable[[str, str], str] | None = None
    miss_kinds: tuple[str, ...] = ()  # the kinds `classify_miss` answers, in the order to show them

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

    @property
    def caption_bank_kind(self) -> str:
        """What the texts of `caption_texts` are: `GALLERY_DESCRIPTIONS` or `OTHER_EDIT_CAPTIONS`."""
        return GALLERY_DESCRIPTIONS if self.captions else OTHER_EDIT_CAPTIONS

    def caption_texts(self) -> tuple[list[str], list[str | None]]:
        """Texts for a caption bank, with the gallery image each describes: the images' descriptions
        where the benchmark has them (shapes, scenes3d), else the split's relative captions (CIRR, FashionIQ),
        which describe edits rather than images (`caption_bank_kind` says which)."""
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


class TrainingExtras:
    """What a dataset adds to the one training loop beyond its triplets; this base adds nothing.

    A dataset whose labels allow more (shapes: rendered look-alike negatives, more draws of
    rare triplets, a per-region auxiliary loss) returns a subclass from its
    `DatasetSpec.training_extras`; the trainer calls these methods and nothing else.
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


@dataclass(frozen=True)
class NoOptions:
    """The options of a dataset that takes none."""


def options_from_dict(kind: type, values: Any, where: str) -> Any:
    """`kind` (an options dataclass) built from `values`, refusing unknown keys and wrong types;
    the dataclass's own `validate(where)` (when it has one) then checks ranges."""
    options = build_dataclass(kind, values, where)
    check = getattr(options, "validate", None)
    if check is not None:
        check(where)
    return options


def _no_extras(options: Any, root: Path, model: Any, split: TripletSplit, device: str) -> TrainingExtras:
    return TrainingExtras()


def one_validation_split(spec: DatasetSpec, root: Path, split: str, options: Any, max_queries: int) -> TripletSplit:
    """The default validation: one split, at most `max_queries` queries (0 = all)."""
    return subsample(spec.read_split(root, split, options, False, False), max_queries)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the code knows about one dataset: serving it, training on it and scoring a model on it."""

    name: str  # the registry name, e.g. "shapes"
    open: Callable[[Path, str, str | None, bool], BenchmarkSource]  # (data_root, split, category, check_images)
    splits: tuple[str, ...]  # splits that can be served
    default_split: str  # the split served when none is named
    # (root, split, options, for_training, descriptions) -> the split `cir train` reads; `descriptions`
    # asks for each image's description (loss.description_weight), where the dataset has them
    read_split: Callable[[Path, str, Any, bool, bool], TripletSplit]
    protocol: str  # the evaluator that scores a model on it (cir_core.evaluation.protocols)
    headline_metric: str  # the flat report entry that picks the best checkpoint (higher is better)
    options: type = NoOptions  # its training options, a dataclass checking them (validate(where))
    # (spec, root, split, options, max_queries) -> what the protocol's evaluator takes
    read_validation: Callable[[DatasetSpec, Path, str, Any, int], Any] = one_validation_split
    # (options, root, model, training split, device) -> extra negatives, sampling weights, auxiliary losses
    training_extras: Callable[[Any, Path, Any, TripletSplit, str], TrainingExtras] = _no_extras

    def parse_options(self, values: Any) -> Any:
        """This dataset's options from a training config's `data.options` (ValueError naming the option)."""
        values = values if values is not None else {}
        if isinstance(values, dict):
            known = [f.name for f in dataclasses.fields(self.options)]
            unknown = sorted(name for name in values if name not in known)
            if unknown:
                raise ValueError(f"data.options: {self.name} takes no option {', '.join(map(str, unknown))} "
                                 f"(its options: {', '.join(known) or 'none'})")
        return options_from_dict(self.options, values, "data.options")
