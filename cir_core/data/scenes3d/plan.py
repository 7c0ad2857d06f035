"""Sampling the splits of scenes3d in memory: queries, their hard negatives, galleries and groups.

An image is a view: a scene seen from a camera pose. A query's target differs from its
reference by an object edit, a camera edit, or one of each. Its gallery holds, besides
the reference and the target:

- view negatives: the target's scene from other poses, each one camera edit away from
  the reference's pose (the opposite direction first: "left 90" against "right 90"),
  so that the right table from the wrong place ranks below the target;
- edit negatives: other tables from the target's pose: the reference edited the same
  way with another outcome, or not edited at all when the camera moved too, or edited
  some other way when only the camera moved;
- random distractors (random tables from random poses).

Each split draws from its own random stream (seeded by the seed and the split name), so
changing one split's size leaves the others alone. A (reference, target) pair used by an
earlier split (train, then val, then test) is never reused. Only test queries may use
held-out phrasings and held-out (shape, colour) combinations.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import random
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from cir_core.data.query_groups import VIEW_ANGLE
from cir_core.data.scenes3d.camera import DISTANCES, ELEVATIONS, CameraPose
from cir_core.data.scenes3d.edits import CAMERA_EDITS, OBJECT_EDITS, CameraEdit, ObjectEdit, Phrase, camera_edit, \
    camera_edits, combined_phrase, object_edit, opposite_change
from cir_core.data.scenes3d.scene import MAX_OBJECTS, MIN_OBJECTS, Scene3D, SceneObject3D, sample_scene
from cir_core.data.scenes3d.visibility import visible_fractions

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VIEW_AND_OBJECT = "view + object"
OCCLUDED = "occluded"
NOVEL = "novel"
# Group names of the object edits (the colour group is spelled as the caption-keyword groups of CIRR spell it).
OBJECT_GROUPS = {"add": "add", "remove": "remove", "color": "colour", "material": "material", "size": "size",
                 "shape": "shape", "move": "move"}
GROUP_ORDER = (VIEW_ANGLE, VIEW_AND_OBJECT, *CAMERA_EDITS, *OBJECT_GROUPS.values(), OCCLUDED,
               *(f"{n} objects" for n in range(MIN_OBJECTS, MAX_OBJECTS + 1)), NOVEL)
# An edited object must show at least this share of itself where it appears, or the edit is not visible.
MIN_VISIBLE = 0.3
# Below this visible share in the target (the reference for a removal), an edited object is "occluded".
OCCLUDED_BELOW = 0.9
# Share of test tables drawn with held-out combinations allowed (any test edit may introduce one), so
# that most test queries stay comparable with val ones and the novel ones form a group of their own.
HELD_OUT_SCENE_SHARE = 0.3
_TRIES_PER_KIND = 6
# Draws without a new query before giving up (only absurd counts get there).
_MAX_STALE_DRAWS = 10_000
# Gallery images a dataset may plan: at 128 pixels and 16 samples some 30 hours on two cores.
MAX_IMAGES = 1_000_000


@dataclass
class Scenes3DCounts:
    """How many queries each split gets, and what its gallery holds besides references and targets."""

    # Rendering time of the defaults: docs/scenes3d.md. Train queries need no gallery of hard
    # negatives (training contrasts a batch's targets, and four edits of one view in a batch
    # are the hard negatives), so a train query costs one image and a quarter.
    train: int = 8000  # train triplets
    val: int = 300  # val triplets
    test: int = 800  # test triplets
    train_edits_per_reference: int = 4  # different edits of each train reference view (val and test use 1)
    view_negatives: int = 2  # per val/test query: the target's table from other poses
    edit_negatives: int = 2  # per val/test query: other tables from the target's pose
    train_negatives: int = 0  # per train query: view negatives, and as many edit negatives
    distractor_fraction: float = 0.1  # random views, as a fraction of the split's other images
    camera_only_fraction: float = 0.25  # share of queries that only move the camera
    combined_fraction: float = 0.25  # share of queries with one object edit and one camera edit
    # The train split's own shares (None: as above). More camera edits per train reference put
    # more views of one table in a batch, the negatives a camera edit must beat.
    train_camera_only_fraction: float | None = None
    train_combined_fraction: float | None = None

    def triplets(self, split: str) -> int:
        return {"train": self.train, "val": self.val, "test": self.test}[split]

    def negatives(self, split: str) -> tuple[int, int]:
        """(view negatives, edit negatives) per query of the split."""
        if split == "train":
            return self.train_negatives, self.train_negatives
        return self.view_negatives, self.edit_negatives

    def fractions(self, split: str) -> tuple[float, float]:
        """(camera-only share, combined share) of the split's queries."""
        camera_only, combined = self.camera_only_fraction, self.combined_fraction
        if split == "train":
            if self.train_camera_only_fraction is not None:
                camera_only = self.train_camera_only_fraction
            if self.train_combined_fraction is not None:
                combined = self.train_combined_fraction
        return camera_only, combined

    def planned_images(self) -> int:
        """At most how many images the splits plan (shared views are rendered once)."""
        total = 0
        for split in SPLITS:
            per_query = 2 + sum(self.negatives(split))
            total += math.ceil(self.triplets(split) * per_query * (1 + self.distractor_fraction))
        return total

    def validate(self) -> None:
        whole = {name: value for name, value in asdict(self).items() if not name.endswith("fraction")}
        shares = {name: value for name, value in asdict(self).items() if name.endswith("fraction")
                  and not (name.startswith("train_") and value is None)}
        for name, value in whole.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"invalid scenes3d counts: {name} must be a whole number >= 0, got {value!r}")
        for name, value in shares.items():
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value >= 0):
                raise ValueError(f"invalid scenes3d counts: {name} must be a finite number >= 0, got {value!r}")
        checks = [
            (any(self.triplets(s) > 0 for s in SPLITS), "at least one split needs a query"),
            (1 <= self.train_edits_per_reference <= 4, "train_edits_per_reference must be within 1..4"),
            (sum(self.fractions("val")) <= 1, "camera_only_fraction + combined_fraction must be at most 1"),
            (sum(self.fractions("train")) <= 1,
             "the train split's camera-only and combined fractions must add up to at most 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid scenes3d counts: {message}")
        if self.planned_images() > MAX_IMAGES:
            raise ValueError(f"invalid scenes3d counts: they plan up to {self.planned_images():,} images, more than "
                             f"the {MAX_IMAGES:,} this benchmark renders (fewer triplets or negatives)")


@dataclass(frozen=True)
class View:
    """One image: a scene seen from a pose."""

    scene: Scene3D
    pose: CameraPose

    @property
    def id(self) -> str:
        """Stable 12-hex-digit hash of the scene label and the pose: the image's name."""
        return hashlib.sha1(f"{self.scene.id}@{self.pose.id}".encode("ascii")).hexdigest()[:12]


@dataclass(frozen=True)
class Scenes3DQuery:
    """One planned triplet, as labels."""

    reference: View
    target: View
    caption: str  # the relative caption
    object_edit: ObjectEdit | None  # what changed on the table (None: nothing)
    camera_edit: CameraEdit | None  # how the camera moved (None: it stayed)
    novel: bool  # a held-out phrasing or combination is involved
    visible_fraction: float | None  # the edited object's visible share in the target (reference for a removal)
    view_negatives: tuple[View, ...]  # the target's scene from other poses
    edit_negatives: tuple[View, ...]  # other scenes from the target's pose
    groups: tuple[str, ...] = field(default=())  # query groups, in GROUP_ORDER

    @property
    def edit(self) -> str:
        """"color", "orbit" or "color+orbit"."""
        parts = (self.object_edit, self.camera_edit)
        return "+".join(part.kind for part in parts if part is not None)


@dataclass
class Scenes3DSplitPlan:
    """A split before rendering: its queries and its gallery."""

    name: str  # "train", "val" or "test"
    queries: list[Scenes3DQuery]  # in pairid order
    gallery: list[View]  # every reference, target, negative and distractor, sorted by id


def query_groups(object_change: ObjectEdit | None, camera_change: CameraEdit | None, reference: Scene3D,
                 visible_fraction: float | None, novel: bool) -> tuple[str, ...]:
    """The groups of a query, in GROUP_ORDER."""
    groups = []
    if camera_change is not None:
        groups.append(VIEW_AND_OBJECT if object_change is not None else VIEW_ANGLE)
        groups.append(camera_change.kind)
    if object_change is not None:
        groups.append(OBJECT_GROUPS[object_change.kind])
    if visible_fraction is not None and visible_fraction < OCCLUDED_BELOW:
        groups.append(OCCLUDED)
    groups.append(f"{len(reference.objects)} objects")
    if novel:
        groups.append(NOVEL)
    return tuple(sorted(groups, key=GROUP_ORDER.index))


def _split_rng(seed: int, split: str) -> random.Random:
    return random.Random(f"scenes3d-v1/{seed}/{split}")


def _sample_table(rng: random.Random, held_out: bool) -> Scene3D:
    return sample_scene(rng, held_out=held_out and rng.random() < HELD_OUT_SCENE_SHARE)


def random_pose(rng: random.Random) -> CameraPose:
    return CameraPose(rng.randrange(360), rng.choice(list(ELEVATIONS)), rng.choice(list(DISTANCES)))


@functools.lru_cache(maxsize=256)
def view_visibility(view: View) -> tuple[float, ...]:
    """Each object's visible share in the view (cached: a query asks for its reference's several times)."""
    return tuple(visible_fractions(view.scene, view.pose))


def _visible(view: View, obj: SceneObject3D) -> float:
    return view_visibility(view)[view.scene.objects.index(obj)]


def _edited_visibility(reference: View, target: View, change: ObjectEdit) -> float | None:
    """The edited object's visible share in the target (reference for a removal); None when the edit or
    an object it is placed relative to would not be seen well enough to tell it."""
    if change.before is not None and _visible(reference, change.before) < MIN_VISIBLE:
        return None
    if change.anchor is not None and _visible(reference, change.anchor) < MIN_VISIBLE:
        return None
    if change.after is None:
        return _visible(reference, change.before)
    shown = _visible(target, change.after)
    return shown if shown >= MIN_VISIBLE else None


def _view_negatives(reference: View, target: View, change: CameraEdit | None, count: int,
                    rng: random.Random) -> list[View]:
    """The target's scene from poses one camera edit away from the reference's (or the reference's own)."""
    if count == 0:
        return []
    edits = camera_edits(reference.pose)
    first = opposite_change(change.change) if change else None
    poses = [edit.target for edit in edits if edit.change == first]
    others = [edit.target for edit in edits if edit.change != first] + [reference.pose]
    poses += rng.sample(others, len(others))
    chosen: list[View] = []
    for pose in poses:
        view = View(target.scene, pose)
        if pose != target.pose and view.id != reference.id and view not in chosen:
            chosen.append(view)
        if len(chosen) == count:
            break
    return chosen


def _edit_negatives(reference: View, target: View, object_change: ObjectEdit | None, moved: bool, count: int,
                    rng: random.Random, held_out: bool) -> list[View]:
    """Other scenes from the target's pose: the unedited table when the camera moved too, another
    outcome of the same edit (of any edit when only the camera moved, or when the same kind has no other)."""
    scenes: list[Scene3D] = []
    if object_change is not None and moved:
        scenes.append(reference.scene)
    for attempt in range(6 * count):
        if len(scenes) >= count:
            break
        # Some edits have few other outcomes (a size change on a crowded table): then any kind will do.
        same_kind = object_change is not None and attempt < 4 * count
        kind = object_change.kind if same_kind else rng.choice(OBJECT_EDITS)
        other = object_edit(reference.scene, kind, reference.pose, rng, held_out)
        if other is not None and other.target != target.scene and other.target not in scenes:
            scenes.append(other.target)
    return [View(scene, target.pose) for scene in scenes[:count]]


def _kinds(rng: random.Random, fractions: tuple[float, float], reference: Scene3D) -> tuple[str | None, str | None]:
    """(object edit kind or None, camera edit kind or None) for one query.

    The object edit is drawn among those the table allows (no adding to a full table, no
    removing from a table of three), so that adding and removing are as common as the rest.
    """
    camera_only, combined = fractions
    draw = rng.random()
    camera = rng.choice(CAMERA_EDITS) if draw < camera_only + combined else None
    if draw < camera_only:
        return None, camera
    count = len(reference.objects)
    kinds = [kind for kind in OBJECT_EDITS
             if not (kind == "add" and count == MAX_OBJECTS) and not (kind == "remove" and count == MIN_OBJECTS)]
    return rng.choice(kinds), camera


def plan_query(reference: View, kinds: tuple[str | None, str | None], rng: random.Random, held_out: bool,
               negatives: tuple[int, int]) -> Scenes3DQuery | None:
    """One query of the given kinds from `reference`, or None when the draw gives no clearly visible edit."""
    object_kind, camera_kind = kinds
    object_change = object_edit(reference.scene, object_kind, reference.pose, rng, held_out) if object_kind else None
    if object_kind and object_change is None:
        return None
    camera_change = camera_edit(reference.pose, camera_kind, rng) if camera_kind else None
    target = View(object_change.target if object_change else reference.scene,
                  camera_change.target if camera_change else reference.pose)
    visible = None
    if object_change is not None:
        visible = _edited_visibility(reference, target, object_change)
        if visible is None:
            return None
    parts: list[Phrase] = [change.phrase(rng, held_out) for change in (object_change, camera_change) if change]
    caption = parts[0] if len(parts) == 1 else combined_phrase(parts[0], parts[1], rng, held_out)
    novel = caption.held_out or reference.scene.has_held_out_combination() or target.scene.has_held_out_combination()
    view_count, edit_count = negatives
    return Scenes3DQuery(
        reference=reference, target=target, caption=caption.text, object_edit=object_change,
        camera_edit=camera_change, novel=novel, visible_fraction=None if visible is None else round(visible, 3),
        view_negatives=tuple(_view_negatives(reference, target, camera_change, view_count, rng)),
        edit_negatives=tuple(_edit_negatives(reference, target, object_change, camera_change is not None,
                                             edit_count, rng, held_out)),
        groups=query_groups(object_change, camera_change, reference.scene, visible, novel),
    )


def plan_split(split: str, seed: int, counts: Scenes3DCounts, used_pairs: set[tuple[str, str]],
               progress: bool = True) -> Scenes3DSplitPlan:
    """Sample one split; adds its (reference id, target id) pairs to `used_pairs`."""
    if split not in SPLITS:
        raise ValueError(f"unknown scenes3d split {split!r}; choose from {SPLITS}")
    rng = _split_rng(seed, split)
    held_out = split == "test"
    per_reference = counts.train_edits_per_reference if split == "train" else 1
    wanted = counts.triplets(split)
    queries: list[Scenes3DQuery] = []
    stale = 0
    with tqdm(total=wanted, desc=f"sampling scenes3d/{split}", unit="query", disable=not progress) as bar:
        while len(queries) < wanted:
            reference = View(_sample_table(rng, held_out), random_pose(rng))
            needed = min(per_reference, wanted - len(queries))
            found: dict[str, Scenes3DQuery] = {}
            for _ in range(4 * needed):
                if len(found) == needed:
                    break
                kinds = _kinds(rng, counts.fractions(split), reference.scene)
                # The same kinds are tried again when a draw is not clearly visible, or the kinds that
                # need a clear view (add and move, with their anchors) would come out rarer than the rest.
                for _ in range(_TRIES_PER_KIND):
                    query = plan_query(reference, kinds, rng, held_out, counts.negatives(split))
                    if query is not None:
                        break
                if query is not None and (reference.id, query.target.id) not in used_pairs:
                    found.setdefault(query.target.id, query)
            # A reference gets all its edits or none, so train references have exactly as many as asked.
            added = list(found.values()) if len(found) == needed else []
            used_pairs.update((reference.id, query.target.id) for query in added)
            queries.extend(added)
            bar.update(len(added))
            stale = 0 if added else stale + 1
            if stale > _MAX_STALE_DRAWS:
                raise RuntimeError(f"scenes3d/{split}: could not find {wanted} distinct queries")
    return Scenes3DSplitPlan(split, queries, _gallery(queries, rng, held_out, counts))


def _gallery(queries: list[Scenes3DQuery], rng: random.Random, held_out: bool,
             counts: Scenes3DCounts) -> list[View]:
    views: dict[str, View] = {}
    for query in queries:
        for view in (query.reference, query.target, *query.view_negatives, *query.edit_negatives):
            views.setdefault(view.id, view)
    own = len(views)
    for _ in range(round(counts.distractor_fraction * own)):
        view = View(_sample_table(rng, held_out), random_pose(rng))
        views.setdefault(view.id, view)
    logger.debug("gallery: %d own views, %d in all", own, len(views))
    return [views[view_id] for view_id in sorted(views)]


def plan_splits(seed: int = 0, counts: Scenes3DCounts | None = None, progress: bool = True
                ) -> dict[str, Scenes3DSplitPlan]:
    """The splits that get queries, sampled in order train, val, test."""
    counts = counts or Scenes3DCounts()
    counts.validate()
    used_pairs: set[tuple[str, str]] = set()
    return {split: plan_split(split, seed, counts, used_pairs, progress)
            for split in SPLITS if counts.triplets(split) > 0}
