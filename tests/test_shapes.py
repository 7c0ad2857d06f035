"""The shapes benchmark: labels, rendering, edits (checked by an independent caption
interpreter), held-out parts, split sampling, the on-disk format and its reader, the CLI."""
import argparse
import collections
import hashlib
import json
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cir_core.cli import data as data_cli
from cir_core.data import shapes as shapes_module
from cir_core.data.shapes import (
    COLORS,
    EDIT_TYPES,
    HELD_OUT_COMBINATIONS,
    HELD_OUT_PHRASINGS,
    NUM_CELL_CLASSES,
    PHRASINGS,
    SHAPES,
    SceneObject,
    ShapesCounts,
    ShapesScene,
    apply_edit,
    cell_labels,
    edit_scene,
    perturb_one_attribute,
    plan_splits,
    read_shapes_scenes,
    read_shapes_split,
    refer,
    render_scene,
    sample_scene,
    write_shapes_dataset,
)
from cir_core.data.shapes_scene import draw_object
from fuzzing import corrupt_file

TINY = ShapesCounts(train=24, val=6, test=8, hard_negative_fraction=1.0)

# ------------------------------------------------------------------ an independent caption interpreter
ROWS = {"top": 0, "middle": 1, "bottom": 2}
COLS = {"left": 0, "center": 1, "right": 2}
COLOR_RE = "|".join(COLORS)
SHAPE_RE = "|".join(SHAPES)
POS_RE = r"center|(?:top|middle|bottom) (?:left|center|right)"
REF_RE = rf"the (?:(small|large) )?({COLOR_RE}) ({SHAPE_RE})(?: in the ({POS_RE}))?"
VIEWPOINT_MAPS = {
    "mirror": lambda r, c: (r, 2 - c),
    "clockwise": lambda r, c: (c, 2 - r),
    "counterclockwise": lambda r, c: (2 - c, r),
    "half": lambda r, c: (2 - r, 2 - c),
}


def cell_of(position: str) -> tuple[int, int]:
    if position == "center":
        return (1, 1)
    row, col = position.split()
    return ROWS[row], COLS[col]


def rotation_of(caption: str) -> str:
    if "counter" in caption or caption.endswith("left"):
        return "counterclockwise"
    if "clockwise" in caption or caption.endswith("right"):
        return "clockwise"
    assert any(word in caption for word in ("upside", "opposite", "180", "half")), caption
    return "half"


def interpret(scene: ShapesScene, caption: str, edit: str) -> ShapesScene:
    """Apply the caption to the scene from its words alone; asserts that it names one object."""
    if edit == "add":
        match = re.search(rf"a (small|large) ({COLOR_RE}) ({SHAPE_RE}) at the ({POS_RE})$", caption)
        assert match, caption
        row, col = cell_of(match[4])
        assert scene.at(row, col) is None, caption
        return ShapesScene(scene.objects + (SceneObject(row, col, match[3], match[2], match[1]),))
    if edit in ("mirror", "rotate"):
        mapping = VIEWPOINT_MAPS["mirror" if edit == "mirror" else rotation_of(caption)]
        return ShapesScene(tuple(SceneObject(*mapping(o.row, o.col), o.shape, o.color, o.size) for o in scene.objects))
    match = re.search(REF_RE, caption)
    assert match, caption
    size, color, shape, position = match.groups()
    named = [o for o in scene.objects if o.color == color and o.shape == shape and size in (None, o.size)
             and (position is None or cell_of(position) == (o.row, o.col))]
    assert len(named) == 1, f"{caption!r} names {len(named)} objects of {scene}"
    obj = named[0]
    kept = tuple(o for o in scene.objects if o != obj)
    rest = caption[match.end():]
    if edit == "remove":
        return ShapesScene(kept)
    if edit == "color":
        (color,) = re.findall(COLOR_RE, rest)
    elif edit == "shape":
        (shape,) = re.findall(SHAPE_RE, rest)
    elif edit == "size":
        words = set((caption[:match.start()] + rest).split())
        small = words & {"smaller", "shrink", "down", "small"}
        large = words & {"larger", "bigger", "enlarge", "up", "large"}
        assert bool(small) != bool(large), caption
        size = "small" if small else "large"
    elif edit == "move":
        (position,) = re.findall(rf"the ({POS_RE})$", rest)
        obj = SceneObject(*cell_of(position), obj.shape, obj.color, obj.size)
    return ShapesScene(kept + (SceneObject(obj.row, obj.col, shape, color, size or obj.size),))


FIELD_RE = {
    "ref": rf"(?:(?:small|large) )?(?:{COLOR_RE}) (?:{SHAPE_RE})(?: in the (?:{POS_RE}))?",
    "obj": rf"(?:small|large) (?:{COLOR_RE}) (?:{SHAPE_RE})",
    "pos": POS_RE, "color": COLOR_RE, "shape": SHAPE_RE, "verb": "shrink|enlarge", "direction": "down|up",
    "comparative": "smaller|larger", "bigger": "smaller|bigger", "adjective": "small|large",
}
FAMILIES = {edit: [edit] for edit in EDIT_TYPES} | {"rotate": ["rotate_cw", "rotate_ccw", "rotate_180"]}


def template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?:{FIELD_RE[p]})" for i, p in enumerate(parts)))


def template_of(caption: str, edit: str) -> str:
    """The one template of the edit's families that produced the caption."""
    matches = [t for f in FAMILIES[edit] for t in PHRASINGS[f] if template_regex(t).fullmatch(caption)]
    assert len(matches) == 1, (caption, matches)
    return matches[0]


def uses_held_out_phrasing(caption: str, edit: str) -> bool:
    return template_of(caption, edit) in HELD_OUT_PHRASINGS.values()


def obj(row, col, shape, color, size="large"):
    return SceneObject(row, col, shape, color, size)


# ------------------------------------------------------------------ labels
def test_scene_label_is_canonical_and_validated():
    a = ShapesScene((obj(2, 2, "square", "blue"), obj(0, 0, "circle", "red", "small")))
    b = ShapesScene((obj(0, 0, "circle", "red", "small"), obj(2, 2, "square", "blue")))
    assert a == b and a.id == b.id
    expected = hashlib.sha1(b"0,0,circle,red,small|2,2,square,blue,large").hexdigest()[:12]
    assert a.id == expected
    assert ShapesScene.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert ShapesScene((obj(0, 0, "circle", "red"),)).id != ShapesScene((obj(0, 0, "circle", "red", "small"),)).id
    with pytest.raises(ValueError, match="share a cell"):
        ShapesScene((obj(1, 1, "circle", "red"), obj(1, 1, "square", "blue")))
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        ShapesScene((obj(0, 0, "circle", "pink"),))
    with pytest.raises(ValueError, match="outside the 3x3 grid"):
        ShapesScene((obj(3, 0, "circle", "red"),))
    with pytest.raises(ValueError, match="at least one object"):
        ShapesScene(())
    with pytest.raises(ValueError, match="not a shapes scene label"):
        ShapesScene.from_dict({"objects": [{"row": 0}]})


def test_cell_labels_hand_worked():
    scene = ShapesScene((obj(0, 0, "circle", "red", "small"), obj(1, 1, "square", "blue", "large"),
                         obj(2, 1, "triangle", "yellow", "large")))
    # class = 1 + (shape * 8 + colour) * 2 + size, shapes (square, circle, triangle), sizes (small, large)
    red_circle, blue_square, yellow_triangle = 1 + (1 * 8 + 1) * 2 + 0, 1 + (0 * 8 + 2) * 2 + 1, 1 + (2 * 8 + 7) * 2 + 1
    expected = torch.tensor([red_circle, 0, 0, 0, blue_square, 0, 0, yellow_triangle, 0])
    assert torch.equal(cell_labels(scene), expected)
    assert cell_labels(scene).dtype == torch.long
    assert NUM_CELL_CLASSES == 49 and int(expected.max()) == NUM_CELL_CLASSES - 1


def test_sampled_scenes_cover_object_counts_and_respect_held_out():
    rng = random.Random(0)
    train = [sample_scene(rng, train=True) for _ in range(3000)]
    counts = collections.Counter(len(s.objects) for s in train)
    assert sorted(counts) == [1, 2, 3, 4, 5]
    assert all(450 < n < 750 for n in counts.values()), counts  # uniform: 600 each
    assert not any(s.has_held_out_combination() for s in train)
    evaluation = [sample_scene(rng, train=False) for _ in range(1000)]
    seen = {o.combination for s in evaluation for o in s.objects}
    assert set(HELD_OUT_COMBINATIONS) <= seen


# ------------------------------------------------------------------ rendering
def test_render_puts_colours_and_sizes_where_expected():
    scene = ShapesScene((obj(0, 0, "square", "red"), obj(0, 2, "circle", "cyan", "small"),
                         obj(2, 1, "triangle", "purple"), obj(1, 1, "square", "green", "small")))
    image = np.asarray(render_scene(scene, 96)).astype(int)
    assert image.shape == (96, 96, 3)
    centre = lambda r, c: (32 * r + 16, 32 * c + 16)  # (y, x) of a cell centre at 96 px
    for o in scene.objects:
        y, x = centre(o.row, o.col)
        assert tuple(image[y, x]) == COLORS[o.color], o
    for r, c in [(0, 1), (1, 0), (1, 2), (2, 0), (2, 2)]:
        assert tuple(image[centre(r, c)]) == (255, 255, 255)
    # large squares span 24 px, small ones 13 px: 9 px from the centre is inside only the large one
    y, x = centre(0, 0)
    assert tuple(image[y + 9, x + 9]) == COLORS["red"]
    y, x = centre(1, 1)
    assert tuple(image[y + 9, x + 9]) == (255, 255, 255)
    assert tuple(image[y + 5, x + 5]) == COLORS["green"]
    # the triangle points up: wide at the bottom, narrow at the top
    y, x = centre(2, 1)
    assert tuple(image[y + 10, x - 10]) == COLORS["purple"]
    assert tuple(image[y - 10, x - 10]) == (255, 255, 255)
    assert tuple(image[y - 8, x]) == COLORS["purple"]
    # antialiased edges: some pixels mix the object colour with the background
    values = {tuple(p) for p in image.reshape(-1, 3)}
    assert len(values) > len(scene.objects) + 1


@pytest.mark.parametrize("size", [32, 96, 100])
def test_tiled_rendering_equals_one_big_canvas(size):
    rng = random.Random(size)
    for _ in range(30):
        scene = sample_scene(rng, train=False)
        canvas = Image.new("RGB", (size * 4, size * 4), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for o in scene.objects:
            draw_object(draw, o, size, 4)
        assert np.array_equal(np.asarray(canvas.reduce(4)), np.asarray(render_scene(scene, size)))


def test_render_rejects_tiny_images():
    with pytest.raises(ValueError, match="too small"):
        render_scene(ShapesScene((obj(0, 0, "square", "red"),)), 16)


# ------------------------------------------------------------------ edits
def test_phrasings_hold_one_out_per_family():
    assert set(PHRASINGS) == {"add", "remove", "color", "shape", "size", "move", "mirror", "rotate_cw",
                              "rotate_ccw", "rotate_180"}
    for family, templates in PHRASINGS.items():
        assert len(set(templates)) == len(templates) >= 5, family  # at least 4 left for training
        assert HELD_OUT_PHRASINGS[family] in templates


@pytest.mark.parametrize("train", [True, False])
def test_every_edit_changes_the_scene_exactly_as_its_caption_says(train):
    rng = random.Random(1 if train else 2)
    used = collections.defaultdict(set)
    for _ in range(400):
        reference = sample_scene(rng, train=train)
        for edit_type in EDIT_TYPES:
            edit = edit_scene(reference, edit_type, rng, train=train)
            if edit is None:
                continue
            target, caption, kind, novel = edit
            assert kind == edit_type
            assert target != reference and target.id != reference.id
            assert interpret(reference, caption, kind) == target, caption
            held_out_phrase = uses_held_out_phrasing(caption, kind)
            assert novel == (held_out_phrase or reference.has_held_out_combination()
                             or target.has_held_out_combination())
            if train:
                assert not novel and not target.has_held_out_combination()
            used[kind].add(template_of(caption, kind))
            if kind == "add":
                assert len(target.objects) == len(reference.objects) + 1 <= 5
            if kind == "remove":
                assert len(target.objects) == len(reference.objects) - 1 >= 1
    for edit_type in EDIT_TYPES:
        templates = {t for f in FAMILIES[edit_type] for t in PHRASINGS[f]}
        held_out = {HELD_OUT_PHRASINGS[f] for f in FAMILIES[edit_type]}
        assert used[edit_type] == (templates - held_out if train else templates), edit_type


def test_viewpoint_edits_map_cells_by_hand():
    top_center = ShapesScene((obj(0, 1, "triangle", "blue"), obj(0, 0, "circle", "red", "small")))
    mirrored = edit_scene(top_center, "mirror", random.Random(0))
    assert mirrored.target == ShapesScene((obj(0, 1, "triangle", "blue"), obj(0, 2, "circle", "red", "small")))
    expected = {
        "clockwise": ShapesScene((obj(1, 2, "triangle", "blue"), obj(0, 2, "circle", "red", "small"))),
        "counterclockwise": ShapesScene((obj(1, 0, "triangle", "blue"), obj(2, 0, "circle", "red", "small"))),
        "half": ShapesScene((obj(2, 1, "triangle", "blue"), obj(2, 2, "circle", "red", "small"))),
    }
    seen = set()
    for seed in range(40):
        edit = edit_scene(top_center, "rotate", random.Random(seed), train=False)
        direction = rotation_of(edit.caption)
        assert edit.target == expected[direction], edit.caption
        seen.add(direction)
    assert seen == set(expected)


def test_symmetric_and_impossible_edits_are_never_produced():
    centre_only = ShapesScene((obj(1, 1, "square", "red"),))
    assert edit_scene(centre_only, "mirror", random.Random(0)) is None
    assert edit_scene(centre_only, "rotate", random.Random(0)) is None
    assert edit_scene(centre_only, "remove", random.Random(0)) is None
    symmetric = ShapesScene((obj(0, 0, "square", "red"), obj(0, 2, "square", "red")))
    assert edit_scene(symmetric, "mirror", random.Random(0)) is None
    full = ShapesScene(tuple(obj(r, c, "circle", "blue") for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]))
    assert edit_scene(full, "add", random.Random(0)) is None
    kinds = {apply_edit(centre_only, random.Random(seed)).edit_type for seed in range(60)}
    assert kinds == {"add", "color", "shape", "size", "move"}
    with pytest.raises(ValueError, match="unknown edit type"):
        edit_scene(centre_only, "explode", random.Random(0))
    with pytest.raises(ValueError, match="held-out"):
        apply_edit(ShapesScene((obj(0, 0, "triangle", "red"),)), random.Random(0), train=True)


def test_references_add_size_then_position_only_when_needed():
    a, b = obj(0, 0, "circle", "red", "small"), obj(1, 1, "circle", "red", "large")
    c, d = obj(2, 2, "square", "blue", "large"), obj(2, 0, "square", "blue", "large")
    scene = ShapesScene((a, b, c, d, obj(0, 2, "triangle", "green")))
    assert refer(scene, a) == "small red circle"
    assert refer(scene, b) == "large red circle"
    assert refer(scene, c) == "blue square in the bottom right"
    assert refer(scene, d) == "blue square in the bottom left"
    assert refer(scene, scene.at(0, 2)) == "green triangle"


def test_hard_negatives_differ_by_one_attribute():
    rng = random.Random(3)
    changed = collections.Counter()
    for _ in range(300):
        scene = sample_scene(rng, train=True)
        negative = perturb_one_attribute(scene, rng, train=True)
        assert negative != scene and len(negative.objects) == len(scene.objects)
        assert not negative.has_held_out_combination()
        gone, new = set(scene.objects) - set(negative.objects), set(negative.objects) - set(scene.objects)
        assert len(gone) == len(new) == 1
        (old,), (now,) = gone, new
        diffs = [name for name in ("shape", "color", "size") if getattr(old, name) != getattr(now, name)]
        diffs += ["position"] if (old.row, old.col) != (now.row, now.col) else []
        assert len(diffs) == 1
        changed[diffs[0]] += 1
    assert set(changed) == {"shape", "color", "size", "position"}


# ------------------------------------------------------------------ splits
@pytest.fixture(scope="module")
def plans():
    return plan_splits(seed=5, counts=ShapesCounts(train=2000, val=300, test=300), progress=False)


def test_train_split_never_shows_held_out_parts(plans):
    train = plans["train"]
    scenes = [q.reference for q in train.queries] + [q.target for q in train.queries] + train.gallery
    assert not any(s.has_held_out_combination() for s in scenes)
    assert not any(uses_held_out_phrasing(q.caption, q.edit) for q in train.queries)
    assert not any(q.novel for q in train.queries)
    used = {template_of(q.caption, q.edit) for q in train.queries}
    assert used == {t for templates in PHRASINGS.values() for t in templates[:-1]}


def test_eval_splits_contain_novel_queries_flagged_correctly(plans):
    for name in ("val", "test"):
        queries = plans[name].queries
        for q in queries:
            assert q.novel == (uses_held_out_phrasing(q.caption, q.edit) or q.reference.has_held_out_combination()
                               or q.target.has_held_out_combination())
        novel = sum(q.novel for q in queries)
        assert 0 < novel < len(queries)
        assert any(uses_held_out_phrasing(q.caption, q.edit) for q in queries)
        assert any(q.target.has_held_out_combination() for q in queries)


def test_split_structure(plans):
    train = plans["train"]
    assert [len(p.queries) for p in plans.values()] == [2000, 300, 300]
    for start in range(0, 2000, 4):  # consecutive queries share a reference: 4 different edits
        group = train.queries[start:start + 4]
        assert len({q.reference for q in group}) == 1
        assert len({q.target for q in group}) == 4 and len({q.edit for q in group}) == 4
    pairs = [{(q.reference.id, q.target.id) for q in p.queries} for p in plans.values()]
    assert not (pairs[0] & pairs[1]) and not (pairs[0] & pairs[2]) and not (pairs[1] & pairs[2])
    counts = collections.Counter(len(q.reference.objects) for q in plans["test"].queries)
    assert all(counts[n] > 30 for n in range(1, 6)), counts
    for plan in plans.values():
        ids = [s.id for s in plan.gallery]
        assert ids == sorted(set(ids))
        members = set(plan.gallery)
        own = {q.reference for q in plan.queries} | {q.target for q in plan.queries}
        assert own <= members
        extra = members - own
        assert len(extra) >= 0.2 * len(own)  # distractors (and hard negatives)
        near = sum(any(len(set(t.objects) ^ set(e.objects)) == 2 and len(t.objects) == len(e.objects)
                       for e in extra) for t in list({q.target for q in plan.queries})[:50])
        assert near > 5  # some targets have a one-attribute-away scene in the gallery


# ------------------------------------------------------------------ on-disk format
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "ds"
    summary = write_shapes_dataset(out, seed=0, image_size=32, counts=TINY, progress=False)
    return out, summary


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_scenes(dataset, tmp_path):
    out, summary = dataset
    again = write_shapes_dataset(tmp_path / "again", seed=0, image_size=32, counts=TINY, progress=False, workers=1)
    assert _tree(out) == _tree(again.path)
    other = write_shapes_dataset(tmp_path / "other", seed=1, image_size=32, counts=TINY, progress=False)
    info, other_info = (json.loads((p / "info.json").read_text()) for p in (out, other.path))
    assert info["held_out"] == other_info["held_out"] and info["seed"] == 0 and other_info["seed"] == 1
    assert set(read_shapes_scenes(out)) != set(read_shapes_scenes(other.path))


def test_written_format(dataset):
    out, summary = dataset
    info = json.loads((out / "info.json").read_text())
    assert info["benchmark"] == "shapes" and info["version"] == 1 and info["image_size"] == 32
    assert info["edit_types"] == list(EDIT_TYPES)
    assert info["held_out"]["combinations"] == [{"shape": s, "color": c} for s, c in HELD_OUT_COMBINATIONS]
    assert info["held_out"]["phrasings"] == HELD_OUT_PHRASINGS
    assert {k: v["triplets"] for k, v in info["splits"].items()} == {"train": 24, "val": 6, "test": 8}
    scenes = json.loads((out / "scenes.json").read_text())
    pngs = {p.stem for p in (out / "images").glob("*.png")}
    assert pngs == set(scenes) and info["images"] == len(pngs) == summary.images
    for split in ("train", "val", "test"):
        entries = json.loads((out / f"{split}.json").read_text())
        gallery = json.loads((out / f"gallery_{split}.json").read_text())
        assert [e["pairid"] for e in entries] == list(range(len(entries)))
        assert set(entries[0]) == {"pairid", "reference", "target", "caption", "edit", "novel"}
        for e in entries:
            reference, target = (ShapesScene.from_dict(scenes[e[k]]) for k in ("reference", "target"))
            assert interpret(reference, e["caption"], e["edit"]) == target
        assert set(gallery) <= set(scenes) and len(gallery) == info["splits"][split]["gallery"]
    for scene_id in list(scenes)[:10]:
        with Image.open(out / "images" / f"{scene_id}.png") as image:
            assert image.size == (32, 32) and image.mode == "RGB"
            expected = render_scene(ShapesScene.from_dict(scenes[scene_id]), 32)
            assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_reader_round_trip(dataset):
    out, _ = dataset
    for split_name in ("train", "val", "test"):
        split = read_shapes_split(out, split_name)
        entries = json.loads((out / f"{split_name}.json").read_text())
        assert split.name == f"shapes/{split_name}" and split.exclude_reference
        assert split.gallery == json.loads((out / f"gallery_{split_name}.json").read_text())
        assert len(split) == len(entries)
        for t, e in zip(split.triplets, entries):
            assert (t.pairid, t.reference, t.target, t.caption, t.edit) == (
                e["pairid"], e["reference"], e["target"], e["caption"], e["edit"])
            assert t.extras == {"novel": e["novel"]}
        assert all(p.is_absolute() and p.is_file() for p in split.image_paths.values())
        assert set(split.image_paths) == set(split.gallery)
    scenes = read_shapes_scenes(out)
    assert all(scene.id == scene_id for scene_id, scene in scenes.items())


def _copy(out, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    return broken


def test_reader_errors_name_the_problem(dataset, tmp_path):
    out, _ = dataset
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_shapes_split(tmp_path / "nowhere", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a shapes dataset.*info.json"):
        read_shapes_split(tmp_path / "empty", "test")
    with pytest.raises(ValueError, match="no shapes split 'dev'.*available"):
        read_shapes_split(out, "dev")

    broken = _copy(out, tmp_path)
    (broken / "val.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.json is missing"):
        read_shapes_split(broken, "val")
    (broken / "gallery_test.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"gallery_test\.json is missing"):
        read_shapes_split(broken, "test")
    gallery = json.loads((broken / "gallery_train.json").read_text())
    for image_id in gallery[:3]:
        (broken / "images" / f"{image_id}.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"3 of {len(gallery)} images of shapes/train are missing"):
        read_shapes_split(broken, "train")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "info.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*info\.json"):
        read_shapes_split(corrupt, "test")
    (corrupt / "info.json").write_text(json.dumps({"benchmark": "cirr"}))
    with pytest.raises(ValueError, match="does not describe a shapes dataset"):
        read_shapes_split(corrupt, "test")

    broken = _copy(out, tmp_path / "b2")
    entries = json.loads((broken / "test.json").read_text())
    del entries[1]["caption"]
    (broken / "test.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"entry 1 lacks \['caption'\]"):
        read_shapes_split(broken, "test")
    entries[1]["caption"] = "x"
    entries[0]["target"] = "ffffffffffff"
    (broken / "test.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="not in gallery_test.json"):
        read_shapes_split(broken, "test")
    scenes = json.loads((broken / "scenes.json").read_text())
    first = next(iter(scenes))
    scenes[first]["objects"][0]["size"] = "small" if scenes[first]["objects"][0]["size"] == "large" else "large"
    (broken / "scenes.json").write_text(json.dumps(scenes))
    with pytest.raises(ValueError, match="corrupt"):
        read_shapes_scenes(broken)


@pytest.mark.parametrize("key, bad, message", [
    ("reference", ["a"], r"entry 0 has reference \['a'\]; expected non-empty text"),
    ("edit", ["color"], r"entry 0 has edit \['color'\]; expected non-empty text"),
    ("caption", None, "entry 0 has caption None; expected non-empty text"),
    ("target", "", "entry 0 has target ''; expected non-empty text"),
    ("pairid", 1.5, "entry 0 has pairid 1.5; expected a whole number"),
    ("pairid", True, "entry 0 has pairid True; expected a whole number"),
    ("novel", "no", "entry 0 has novel 'no'; expected true or false"),
])
def test_reader_refuses_fields_of_the_wrong_type(dataset, tmp_path, key, bad, message):
    broken = _copy(dataset[0], tmp_path)
    entries = json.loads((broken / "test.json").read_text())
    entries[0][key] = bad
    (broken / "test.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=message):
        read_shapes_split(broken, "test")


def test_reader_refuses_repeated_ids_no_queries_and_target_equal_to_reference(dataset, tmp_path):
    broken = _copy(dataset[0], tmp_path)
    gallery = json.loads((broken / "gallery_test.json").read_text())
    (broken / "gallery_test.json").write_text(json.dumps(gallery + gallery[:2]))
    with pytest.raises(ValueError, match=r"gallery_test\.json: image ids must be unique; 2 appear more than once"):
        read_shapes_split(broken, "test")
    (broken / "gallery_test.json").write_text(json.dumps(gallery))
    entries = json.loads((broken / "test.json").read_text())
    (broken / "test.json").write_text(json.dumps(entries + [dict(entries[0], caption="again")]))
    with pytest.raises(ValueError, match=r"test\.json: pairids must be unique; 1 appear more than once \(0\)"):
        read_shapes_split(broken, "test")
    (broken / "test.json").write_text(json.dumps([dict(entries[0], target=entries[0]["reference"])]))
    with pytest.raises(ValueError, match="entry 0 has its reference .* as its target"):
        read_shapes_split(broken, "test")
    (broken / "test.json").write_text("[]")
    with pytest.raises(ValueError, match=r"test\.json holds no queries"):
        read_shapes_split(broken, "test")


def test_reader_fuzz_gives_one_line_errors(dataset, tmp_path, capsys):
    """Seeded random corruptions of a split, its gallery and info.json: `cir eval shapes` stops with
    one line and exit code 2 (a readable corruption reaches the model, which is missing here)."""
    import shutil

    from cir_core.cli import main

    out, _ = dataset
    rng = random.Random(22)
    junk = [None, True, -1, 1.5, "", [], ["a"], {}, {"a": 1}, 10**30]
    broken = tmp_path / "fuzz"
    for trial in range(60):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(out, broken)
        name = rng.choice(["test.json", "gallery_test.json", "info.json"])
        how = rng.choice(["value", "bytes", "truncate"])
        path = broken / name
        if how == "value":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data[rng.choice(sorted(data))] = rng.choice(junk)
            elif name == "test.json":
                entry = rng.choice(data)
                entry[rng.choice(sorted(entry))] = rng.choice(junk + [data[0]["reference"]])
            else:
                data[rng.randrange(len(data))] = rng.choice(junk + [data[0]])
            path.write_text(json.dumps(data))
        else:
            corrupt_file(path, rng, truncate=how == "truncate")
        code = main(["eval", "shapes", "--data", str(broken), "--split", "test", "--model", "local-dir:/nowhere",
                     "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (name, how, err)


def test_writer_refuses_bad_input_and_stays_atomic(dataset, tmp_path, monkeypatch):
    out, _ = dataset
    with pytest.raises(FileExistsError, match="already exists"):
        write_shapes_dataset(out, counts=TINY, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a shapes dataset"):
        write_shapes_dataset(other, counts=TINY, progress=False, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="too small"):
        write_shapes_dataset(tmp_path / "x", image_size=8, counts=TINY, progress=False)
    with pytest.raises(ValueError, match="at least one triplet"):
        write_shapes_dataset(tmp_path / "x", counts=ShapesCounts(train=0), progress=False)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shapes_module, "_render_all", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_shapes_dataset(tmp_path / "half", counts=TINY, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # no folder, no staging left behind


def test_overwrite_replaces_a_dataset(tmp_path):
    first = write_shapes_dataset(tmp_path / "ds", seed=0, image_size=32, counts=TINY, progress=False)
    second = write_shapes_dataset(tmp_path / "ds", seed=1, image_size=32, counts=TINY, progress=False, overwrite=True)
    assert json.loads((second.path / "info.json").read_text())["seed"] == 1
    assert set(read_shapes_scenes(first.path)) == {p.stem for p in (tmp_path / "ds" / "images").glob("*.png")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_pool_rendering_matches_inline(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes_module, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(shapes_module, "_CHUNK", 16)
    pooled = write_shapes_dataset(tmp_path / "pool", image_size=32, counts=TINY, progress=False, workers=2)
    inline = write_shapes_dataset(tmp_path / "inline", image_size=32, counts=TINY, progress=False, workers=1)
    assert _tree(pooled.path) == _tree(inline.path)
    assert pooled.images_per_second > 0


# ------------------------------------------------------------------ CLI
def _cli(argv):
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    assert _cli(["data", "shapes", "--out", str(out), "--seed", "3", "--image-size", "40", "--train", "8",
                 "--val", "2", "--test", "3", "--no-progress"]) == 0
    assert "images/s" in capsys.readouterr().out
    info = json.loads((out / "info.json").read_text())
    assert (info["seed"], info["image_size"]) == (3, 40)
    assert {k: v["triplets"] for k, v in info["splits"].items()} == {"train": 8, "val": 2, "test": 3}
    assert info["sampling"]["hard_negative_fraction"] == ShapesCounts().hard_negative_fraction
    assert len(read_shapes_split(out, "test")) == 3


@pytest.mark.parametrize("options, message", [
    (["--distractors", "inf"], "distractor_fraction and hard_negative_fraction must be finite numbers, got inf"),
    (["--distractors", "nan"], "must be finite numbers, got nan"),
    (["--distractors", "1e9"], "gallery images, more than the 10,000,000 this benchmark writes"),
    (["--train", "100000000"], "more than the 10,000,000 this benchmark writes"),
    (["--image-size", "100000"], "image size 100000 is too large (maximum 2048)"),
])
def test_cli_refuses_counts_and_sizes_it_cannot_write(tmp_path, capsys, options, message):
    import time

    from cir_core.cli import main

    start = time.monotonic()
    code = main(["data", "shapes", "--out", str(tmp_path / "ds"), "--train", "8", "--val", "2", "--test", "3",
                 "--no-progress", *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert time.monotonic() - start < 5
    assert list(tmp_path.iterdir()) == []  # no dataset and no staging folder
