"""The scenes3d benchmark: labels, camera and relations, visibility, edits (checked by an independent
caption interpreter), descriptions, hard negatives, groups, held-out parts, the folder and the CLI.

The logic tests need no renderer; the ones that render skip when Mitsuba is not installed."""
import collections
import hashlib
import json
import math
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from cir_core.data.query_groups import VIEW_ANGLE
from cir_core.data.scenes3d import (
    COLORS,
    GROUP_ORDER,
    HELD_OUT_COMBINATIONS,
    HELD_OUT_PHRASINGS,
    OBJECT_EDITS,
    PHRASINGS,
    RELATIONS,
    SHAPES,
    CameraPose,
    Scene3D,
    SceneObject3D,
    Scenes3DCounts,
    View,
    camera_edits,
    describe_view,
    object_edit,
    plan_splits,
    relation,
    sample_scene,
    visible_fractions,
)
from cir_core.data.scenes3d.camera import frame, pixel_rays, project
from cir_core.data.scenes3d.describe import camera_words
from cir_core.data.scenes3d.plan import MIN_VISIBLE, OCCLUDED_BELOW
from cir_core.data.scenes3d.visibility import object_masks

PLAN_COUNTS = Scenes3DCounts(train=40, val=20, test=60)
TINY = Scenes3DCounts(train=4, val=2, test=4)
TINY_RENDER = {"image_size": 32, "samples_per_pixel": 4, "progress": False}


def obj(shape, color, x, y, material="matte", size="large", yaw=0):
    return SceneObject3D(shape, color, material, size, x, y, yaw)


@pytest.fixture(scope="module")
def plans():
    return plan_splits(0, PLAN_COUNTS, progress=False)


# ------------------------------------------------------------------ an independent caption interpreter
COLOR_RE, SHAPE_RE = "|".join(COLORS), "|".join(SHAPES)
REF_RE = rf"the ((?:(?:small|large) )?(?:{COLOR_RE}) (?:(?:matte|metal) )?(?:{SHAPE_RE}))"
NEW_RE = rf"an? ((?:small|large) (?:{COLOR_RE}) (?:matte|metal) (?:{SHAPE_RE}))"
REL_RE = r"(to the left of|to the right of|in front of|behind)"
REL_NAMES = {"to the left of": "left of", "to the right of": "right of", "in front of": "in front of",
             "behind": "behind"}


def named(scene: Scene3D, words: str) -> SceneObject3D:
    """The one object of the scene that the words ("small red metal cube") fit."""
    parts = words.split()
    fits = [o for o in scene.objects
            if o.shape == parts[-1] and all(w in (o.size, o.color, o.material) for w in parts[:-1])]
    assert len(fits) == 1, f"{words!r} names {len(fits)} objects"
    return fits[0]


def interpret_object_edit(scene: Scene3D, pose: CameraPose, caption: str, kind: str):
    """(object before, object after) as the caption's words say, the relations checked from `pose`."""
    if kind == "add":
        match = re.search(rf"{NEW_RE} {REL_RE} {REF_RE}", caption)
        assert match, caption
        size, color, material, shape = match[1].split()
        return None, (SceneObject3D(shape, color, material, size, 0, 0), REL_NAMES[match[2]], named(scene, match[3]))
    match = re.search(REF_RE, caption)
    assert match, caption
    before = named(scene, match[1])
    rest = caption[match.end():]
    if kind == "remove":
        return before, None
    if kind == "move":
        moved = re.match(rf".*?{REL_RE} {REF_RE}", rest)
        assert moved, caption
        return before, (before, REL_NAMES[moved[1]], named(scene, moved[2]))
    # the caption without the object's name; camera phrases use none of the words looked for below
    words = set(re.findall(r"[a-z]+", caption[:match.start()] + rest))
    if kind == "color":
        (color,) = words & set(COLORS)
        return before, SceneObject3D(before.shape, color, before.material, before.size, before.x, before.y, before.yaw)
    if kind == "material":
        metal, matte = words & {"metallic", "metal", "shiny"}, words & {"matte", "rubber", "dull"}
        assert bool(metal) != bool(matte), caption
        material = "metal" if metal else "matte"
        return before, SceneObject3D(before.shape, before.color, material, before.size, before.x, before.y, before.yaw)
    if kind == "size":
        small, large = words & {"smaller", "shrink", "small"}, words & {"larger", "enlarge", "bigger", "large"}
        assert bool(small) != bool(large), caption
        size = "small" if small else "large"
        return before, SceneObject3D(before.shape, before.color, before.material, size, before.x, before.y, before.yaw)
    if kind == "shape":
        (shape,) = words & set(SHAPES)
        return before, SceneObject3D(shape, before.color, before.material, before.size, before.x, before.y, before.yaw)
    raise AssertionError(kind)


def interpret_camera_edit(pose: CameraPose, caption: str) -> CameraPose:
    """The pose the caption's camera words ask for, as a person would move: left is the camera's own left."""
    heights, distances = ["low", "middle", "high"], ["close", "medium", "far"]
    if re.search(r"other side|opposite side|180 degrees|halfway around", caption):
        return CameraPose(pose.azimuth + 180, pose.elevation, pose.distance)
    orbit = re.search(r"(45|90|an eighth|a quarter).*?to the (left|right)(?! of)", caption)
    if orbit:
        degrees = {"an eighth": 45, "a quarter": 90}.get(orbit[1]) or int(orbit[1])
        # Walking left around the table: the new place lies to the left of the old one, seen from it.
        view = frame(pose)
        for azimuth in (pose.azimuth + degrees, pose.azimuth - degrees):
            candidate = CameraPose(azimuth, pose.elevation, pose.distance)
            side = float((frame(candidate).origin - view.origin) @ view.right)
            if (side < 0) == (orbit[2] == "left"):
                return candidate
    if re.search(r"higher|raise the camera|camera up", caption):
        return CameraPose(pose.azimuth, heights[heights.index(pose.elevation) + 1], pose.distance)
    if re.search(r"lower|camera down", caption):
        return CameraPose(pose.azimuth, heights[heights.index(pose.elevation) - 1], pose.distance)
    if re.search(r"zoom in|closer", caption):
        return CameraPose(pose.azimuth, pose.elevation, distances[distances.index(pose.distance) - 1])
    if re.search(r"zoom out|camera back|step back|further away", caption):
        return CameraPose(pose.azimuth, pose.elevation, distances[distances.index(pose.distance) + 1])
    return pose


def template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(part) for part in parts))


def uses_held_out_phrasing(caption: str) -> bool:
    return any(template_regex(template).search(caption) for template in HELD_OUT_PHRASINGS.values())


# ------------------------------------------------------------------ labels and sampling
def test_scene_label_is_canonical_and_validated():
    with pytest.raises(ValueError, match="3 to 6 objects"):
        Scene3D((obj("cube", "red", 1.0, 0.0), obj("sphere", "blue", -1.0, 0.5, "metal", "small")))
    three = (obj("cube", "red", 1.5, 0.0), obj("sphere", "blue", -1.5, 0.5, "metal", "small"),
             obj("cone", "green", 0.0, -1.8))
    scene, shuffled = Scene3D(three), Scene3D(three[::-1])
    assert scene == shuffled and scene.id == shuffled.id
    canonical = ("cone,green,matte,large,0.00,-1.80,0|cube,red,matte,large,1.50,0.00,0|"
                 "sphere,blue,metal,small,-1.50,0.50,0")
    assert scene.id == hashlib.sha1(canonical.encode()).hexdigest()[:12]
    assert Scene3D.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    with pytest.raises(ValueError, match="overlap"):
        Scene3D(three[:2] + (obj("cone", "green", 1.6, 0.2),))
    with pytest.raises(ValueError, match="look alike"):
        Scene3D(three[:2] + (obj("cube", "red", 0.0, -1.8),))
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        Scene3D(three[:2] + (obj("cone", "pink", 0.0, -1.8),))
    with pytest.raises(ValueError, match="farther than"):
        Scene3D(three[:2] + (obj("cone", "green", 0.0, -3.0),))
    with pytest.raises(ValueError, match="not a scenes3d scene label"):
        Scene3D.from_dict({"objects": [{"shape": "cube"}]})


def test_sampled_scenes_cover_counts_and_keep_held_out_combinations_to_test():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(400)]
    counts = collections.Counter(len(s.objects) for s in scenes)
    assert sorted(counts) == [3, 4, 5, 6] and all(60 < n < 140 for n in counts.values()), counts
    assert not any(s.has_held_out_combination() for s in scenes)
    held_out = [sample_scene(rng, held_out=True) for _ in range(200)]
    assert set(HELD_OUT_COMBINATIONS) <= {o.combination for s in held_out for o in s.objects}


# ------------------------------------------------------------------ camera, relations, visibility
def test_camera_frame_and_relations_hand_worked():
    pose = CameraPose(0, "middle", "medium")  # on the +x side of the table, looking towards -x
    view = frame(pose)
    assert np.allclose(view.right, [0, 1, 0]) and view.up[2] > 0
    assert abs(view.origin @ [0, 1, 0]) < 1e-9 and view.origin[0] > 0
    assert np.allclose(project(pose, view.target), (0.5, 0.5))
    # +y is to the camera's right: it shows right of centre; +x is nearer the camera
    assert project(pose, np.array([0, 1.0, 0.35]))[0] > 0.5
    assert relation(pose, (0, 1), (0, 0))[0] == "right of"
    assert relation(pose, (0, -1), (0, 0))[0] == "left of"
    assert relation(pose, (1, 0), (0, 0))[0] == "in front of"
    assert relation(pose, (-1, 0.2), (0, 0)) == ("behind", pytest.approx((1 - 0.2) / math.hypot(1, 0.2)))
    # from the other side of the table every relation flips
    opposite = CameraPose(180, "middle", "medium")
    assert relation(opposite, (0, 1), (0, 0))[0] == "left of" and relation(opposite, (1, 0), (0, 0))[0] == "behind"
    assert CameraPose(0, "low", "far").id == "az000-low-far" == CameraPose.from_id("az000-low-far").id
    assert CameraPose(-45, "low", "far").azimuth == 315
    with pytest.raises(ValueError, match="unknown camera elevation"):
        CameraPose(0, "top", "far")


def test_left_and_right_relations_agree_with_the_image():
    rng = random.Random(1)
    checked = 0
    for _ in range(300):
        pose = CameraPose(rng.randrange(360), rng.choice(["low", "middle", "high"]), "medium")
        a, b = (rng.uniform(-2, 2), rng.uniform(-2, 2)), (rng.uniform(-2, 2), rng.uniform(-2, 2))
        name, margin = relation(pose, a, b)
        if name in ("left of", "right of") and margin > 0.5:
            xa, xb = project(pose, np.array([*a, 0.35]))[0], project(pose, np.array([*b, 0.35]))[0]
            assert (xa < xb) == (name == "left of")
            checked += 1
    assert checked > 50


def test_visible_fractions_hand_worked():
    pose = CameraPose(0, "low", "close")  # camera on +x, low: a big cube in front hides what is behind it
    front, behind = obj("cube", "red", 1.2, 0.0), obj("sphere", "blue", -1.0, 0.0, size="small")
    aside = obj("cylinder", "green", 0.0, 2.2, size="small")
    scene = Scene3D((front, behind, aside))
    fractions = dict(zip(scene.objects, visible_fractions(scene, pose)))
    assert fractions[front] == 1.0 and fractions[aside] == 1.0
    assert fractions[behind] < 0.2
    # seen from the far side the sphere is in front and the cube only partly hidden behind it
    other_side = dict(zip(scene.objects, visible_fractions(scene, CameraPose(180, "low", "close"))))
    assert other_side[behind] == 1.0 and 0.5 < other_side[front] < 1.0
    # from high up nothing is hidden, and every pixel shows the table (-1) or one of the three
    hit, nearest = object_masks(scene, CameraPose(0, "high", "far"), 48)
    assert hit.shape == (3, 48, 48) and set(np.unique(nearest)) == {-1, 0, 1, 2}


def test_the_light_is_never_in_view():
    from cir_core.data.scenes3d import render
    from cir_core.data.scenes3d.camera import DISTANCES, ELEVATIONS, FIELD_OF_VIEW

    light = np.array(render.LIGHT_POSITION)
    for azimuth in range(0, 360, 5):
        for pose in (CameraPose(azimuth, e, d) for e in ELEVATIONS for d in DISTANCES):
            view = frame(pose)
            offset = light - view.origin
            distance = float(np.linalg.norm(offset))
            # the angle between the view axis and the light's nearest edge exceeds the half-diagonal of the view
            edge = math.degrees(math.acos(float(offset @ view.forward) / distance)) - math.degrees(
                math.asin(render.LIGHT_RADIUS / distance))
            half_diagonal = math.degrees(math.atan(math.sqrt(2) * math.tan(math.radians(FIELD_OF_VIEW / 2))))
            assert edge > half_diagonal, pose.id


def test_pixel_rays_are_unit_and_centred():
    origin, directions = pixel_rays(CameraPose(30, "high", "close"), 8)
    assert directions.shape == (64, 3) and np.allclose(np.linalg.norm(directions, axis=1), 1)
    middle = directions.reshape(8, 8, 3)[3:5, 3:5].mean(axis=(0, 1))
    assert np.allclose(middle / np.linalg.norm(middle), frame(CameraPose(30, "high", "close")).forward, atol=1e-3)


# ------------------------------------------------------------------ edits
@pytest.mark.parametrize("kind", OBJECT_EDITS)
def test_every_object_edit_changes_the_scene_as_its_caption_says(kind):
    rng = random.Random(kind)
    produced = 0
    for _ in range(60):
        scene, pose = sample_scene(rng), CameraPose(rng.randrange(360), "middle", "medium")
        edit = object_edit(scene, kind, pose, rng, held_out=False)
        if edit is None:
            continue
        produced += 1
        caption = edit.phrase(rng, held_out=False).text
        before, after = interpret_object_edit(scene, pose, caption, kind)
        reference_objects, target_objects = set(scene.objects), set(edit.target.objects)
        assert edit.target != scene and not edit.target.has_held_out_combination()
        if kind == "add":
            template, name, anchor = after
            (added,) = target_objects - reference_objects
            assert reference_objects < target_objects and added.looks == template.looks
            assert relation(pose, (added.x, added.y), (anchor.x, anchor.y))[0] == name
        elif kind == "remove":
            assert target_objects == reference_objects - {before}
        elif kind == "move":
            _, name, anchor = after
            (moved,) = target_objects - reference_objects
            assert target_objects - {moved} == reference_objects - {before} and moved.looks == before.looks
            assert relation(pose, (moved.x, moved.y), (anchor.x, anchor.y))[0] == name
            assert relation(pose, (before.x, before.y), (anchor.x, anchor.y))[0] != name
        else:
            assert target_objects == (reference_objects - {before}) | {after}
            changed = [key for key, value in before.to_dict().items() if after.to_dict()[key] != value]
            assert changed == [kind], (caption, changed)
    assert produced >= 30, produced


def test_camera_edits_move_only_the_camera_and_as_their_words_say():
    rng = random.Random(2)
    for _ in range(40):
        pose = CameraPose(rng.randrange(360), rng.choice(["low", "middle", "high"]),
                          rng.choice(["close", "medium", "far"]))
        edits = camera_edits(pose)
        assert len({e.target for e in edits}) == len(edits) and pose not in {e.target for e in edits}
        for edit in edits:
            caption = edit.phrase(rng, held_out=True).text
            assert interpret_camera_edit(pose, caption) == edit.target, caption
            changed = {key for key, value in pose.to_dict().items() if edit.target.to_dict()[key] != value}
            assert changed == {{"orbit": "azimuth", "height": "elevation", "zoom": "distance"}[edit.kind]}
    assert {e.change for e in camera_edits(CameraPose(0, "high", "close"))} == {
        "left 45", "right 45", "left 90", "right 90", "around 180", "lower", "out"}


def test_planned_queries_match_their_captions_and_change_only_what_they_declare(plans):
    for split in plans.values():
        for query in split.queries:
            reference, target = query.reference, query.target
            assert target.id != reference.id
            assert interpret_camera_edit(reference.pose, query.caption) == target.pose, query.caption
            if query.object_edit is None:
                assert target.scene == reference.scene and target.pose != reference.pose
            else:
                assert target.scene == query.object_edit.target != reference.scene
                interpret_object_edit(reference.scene, reference.pose, query.caption, query.object_edit.kind)
            if query.camera_edit is None:
                assert target.pose == reference.pose
    edits = collections.Counter(q.edit for split in plans.values() for q in split.queries)
    assert {kind for kind in OBJECT_EDITS} <= set(edits) and {"orbit", "height", "zoom"} <= set(edits)
    assert any("+" in edit for edit in edits)


def test_phrasings_hold_one_out_per_family_and_have_three_more():
    assert all(len(templates) >= 4 for templates in PHRASINGS.values())
    assert all(HELD_OUT_PHRASINGS[family] == templates[-1] for family, templates in PHRASINGS.items())


def test_held_out_phrasings_and_combinations_only_in_test(plans):
    for name in ("train", "val"):
        for query in plans[name].queries:
            assert not uses_held_out_phrasing(query.caption), query.caption
            assert not query.novel
            views = (query.reference, query.target, *query.view_negatives, *query.edit_negatives)
            assert not any(view.scene.has_held_out_combination() for view in views)
        assert not any(view.scene.has_held_out_combination() for view in plans[name].gallery)
    test = plans["test"].queries
    for query in test:
        combination = query.reference.scene.has_held_out_combination() or query.target.scene.has_held_out_combination()
        assert query.novel == (uses_held_out_phrasing(query.caption) or combination), query.caption
    assert any(uses_held_out_phrasing(q.caption) for q in test)
    assert any(q.target.scene.has_held_out_combination() for q in test)
    assert not all(q.novel for q in test)


# ------------------------------------------------------------------ descriptions
def test_description_hand_worked():
    pose = CameraPose(0, "high", "far")  # +y is to the right, +x towards the camera
    left = obj("cube", "red", 0.0, -1.8, "metal")
    right = obj("sphere", "blue", 0.0, 1.8, size="small")
    front = obj("cylinder", "green", 1.9, 0.2)
    scene = Scene3D((left, right, front))
    text = describe_view(scene, pose, visible_fractions(scene, pose))
    assert text == ("seen from high up and far away: a large red metal cube left of a large green matte cylinder; "
                    "the large green matte cylinder in front of a small blue matte sphere")
    hidden_cube = [0.0 if o == left else 1.0 for o in scene.objects]
    assert describe_view(scene, pose, hidden_cube) == ("seen from high up and far away: a large green matte cylinder "
                                                       "in front of a small blue matte sphere")


def test_descriptions_name_the_camera_and_relations_of_what_is_visible(plans):
    for query in plans["val"].queries[:10]:
        view = query.target
        visible = visible_fractions(view.scene, view.pose)
        text = describe_view(view.scene, view.pose, visible)
        assert text.startswith(camera_words(view.pose) + ": ")
        shown = [o for o, f in zip(view.scene.objects, visible) if f >= 0.1]
        assert all(o.words() in text for o in shown)
        assert len(re.findall("|".join(RELATIONS), text)) == len(shown) - 1


# ------------------------------------------------------------------ negatives and groups
def test_every_query_has_its_hard_negatives_in_the_gallery(plans):
    for name, split in plans.items():
        views_wanted, edits_wanted = PLAN_COUNTS.negatives(name)
        gallery = {view.id for view in split.gallery}
        assert [v.id for v in split.gallery] == sorted(gallery)
        for query in split.queries:
            assert len(query.view_negatives) == views_wanted and len(query.edit_negatives) == edits_wanted
            for view in query.view_negatives:  # right table, wrong viewpoint
                assert view.scene == query.target.scene and view.pose != query.target.pose
            for view in query.edit_negatives:  # right viewpoint, wrong table
                assert view.pose == query.target.pose and view.scene != query.target.scene
            negatives = {v.id for v in query.view_negatives + query.edit_negatives}
            assert len(negatives) == views_wanted + edits_wanted
            assert not negatives & {query.target.id, query.reference.id}
            assert negatives | {query.target.id, query.reference.id} <= gallery
    orbit = [q for q in plans["test"].queries if q.camera_edit and q.camera_edit.kind == "orbit"
             and q.camera_edit.change != "around 180"]
    # the first view negative of a 45 or 90 degree orbit is the same orbit the other way
    for query in orbit:
        degrees = query.camera_edit.change.split()[1]
        mirrored = {"left": "right", "right": "left"}[query.camera_edit.change.split()[0]]
        expected = [e.target for e in camera_edits(query.reference.pose) if e.change == f"{mirrored} {degrees}"]
        assert query.view_negatives[0].pose == expected[0]


def test_groups_follow_the_edit_and_the_visibility(plans):
    queries = [q for split in plans.values() for q in split.queries]
    for query in queries:
        groups = query.groups
        assert list(groups) == sorted(groups, key=GROUP_ORDER.index)
        camera_only = query.object_edit is None
        assert (VIEW_ANGLE in groups) == camera_only
        assert ("view + object" in groups) == (query.object_edit is not None and query.camera_edit is not None)
        assert f"{len(query.reference.scene.objects)} objects" in groups
        object_groups = {"add", "remove", "colour", "material", "size", "shape", "move"} & set(groups)
        if camera_only:
            assert not object_groups and "occluded" not in groups and query.visible_fraction is None
        else:
            kind = query.object_edit.kind
            assert object_groups == {"colour" if kind == "color" else kind}
            edited = query.object_edit.after or query.object_edit.before
            seen_in = query.target if query.object_edit.after else query.reference
            fraction = visible_fractions(seen_in.scene, seen_in.pose)[seen_in.scene.objects.index(edited)]
            assert query.visible_fraction == pytest.approx(fraction, abs=1e-3) and fraction >= MIN_VISIBLE
            assert ("occluded" in groups) == (fraction < OCCLUDED_BELOW)
        assert ("novel" in groups) == query.novel
    names = collections.Counter(g for q in queries for g in q.groups)
    assert {VIEW_ANGLE, "view + object", "occluded", "3 objects", "6 objects"} <= set(names)


def test_train_camera_shares_change_the_train_split_only():
    counts = Scenes3DCounts(train=200, val=40, test=40)
    camera_heavy = Scenes3DCounts(train=200, val=40, test=40, train_camera_only_fraction=0.75,
                                  train_combined_fraction=0.0)
    usual, heavy = plan_splits(5, counts, progress=False), plan_splits(5, camera_heavy, progress=False)
    camera_only = lambda split: sum(q.object_edit is None for q in split.queries) / len(split.queries)
    combined = lambda split: sum(q.object_edit is not None and q.camera_edit is not None
                                 for q in split.queries) / len(split.queries)
    assert camera_only(usual["train"]) < 0.4 < 0.6 < camera_only(heavy["train"])
    assert combined(heavy["train"]) == 0 < combined(usual["train"])
    captions = lambda split: [q.caption for q in split.queries]
    assert captions(heavy["test"]) == captions(usual["test"])


def test_planning_is_deterministic_and_splits_are_independent():
    counts = Scenes3DCounts(train=6, val=3, test=5)
    first, again = plan_splits(3, counts, progress=False), plan_splits(3, counts, progress=False)
    ids = lambda plan: {name: [(q.reference.id, q.target.id, q.caption) for q in split.queries]
                        for name, split in plan.items()}
    assert ids(first) == ids(again)
    assert ids(plan_splits(4, counts, progress=False)) != ids(first)
    test_only = plan_splits(3, Scenes3DCounts(train=0, val=0, test=5), progress=False)
    assert list(test_only) == ["test"]
    assert {v.id for v in test_only["test"].gallery} == {v.id for v in first["test"].gallery}


@pytest.mark.parametrize("field, value, message", [
    ("train", -1, "train must be a whole number >= 0"),
    ("distractor_fraction", float("nan"), "distractor_fraction must be a finite number"),
    ("train_edits_per_reference", 9, "within 1..4"),
    ("test", 10**7, "plan up to"),
    ("train_combined_fraction", 0.9, "train split's camera-only and combined fractions"),
    ("train_camera_only_fraction", float("inf"), "train_camera_only_fraction must be a finite number"),
])
def test_counts_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        plan_splits(0, Scenes3DCounts(**{field: value}), progress=False)
    with pytest.raises(ValueError, match="at least one split"):
        Scenes3DCounts(train=0, val=0, test=0).validate()


# ------------------------------------------------------------------ CLI errors (no rendering needed)
@pytest.mark.parametrize("options, message", [
    (["--train", "-3"], "--train must be 0 or more"),
    (["--test", "-1"], "--test must be 0 or more"),
    (["--train", "0", "--val", "0", "--test", "0"], "at least one split needs a query"),
    (["--image-size", "8"], "image size 8 is too small (minimum 32)"),
    (["--image-size", "5000"], "image size 5000 is too large (maximum 1024)"),
    (["--samples-per-pixel", "0"], "samples per pixel must be within"),
    (["--workers", "0"], "workers must be at least 1"),
    (["--train-edits-per-reference", "9"], "train_edits_per_reference must be within 1..4"),
    (["--train-negatives", "-2"], "--train-negatives must be 0 or more"),
    (["--train-camera-only-fraction", "-0.5"], "--train-camera-only-fraction must be 0 or more"),
    (["--train-combined-fraction", "nan"], "--train-combined-fraction must be 0 or more"),
])
def test_cli_refuses_bad_flags_with_one_line(tmp_path, capsys, options, message):
    from cir_core.cli import main

    assert main(["data", "scenes3d", "--out", str(tmp_path / "out"), "--no-progress", *options]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_unknown_image_format(tmp_path, capsys):
    from cir_core.cli import main
    from cir_core.data.scenes3d.write import check_settings

    with pytest.raises(SystemExit):
        main(["data", "scenes3d", "--out", str(tmp_path / "out"), "--image-format", "bmp"])
    assert "invalid choice: 'bmp'" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="image format must be one of"):
        check_settings(128, 8, 1, "../bmp")


def test_cli_refuses_to_overwrite_other_folders(tmp_path, capsys):
    from cir_core.cli import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["data", "scenes3d", "--out", str(tmp_path / "mine"), "--no-progress", "--test", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "scenes3d", "--out", str(tmp_path / "mine"), "--overwrite", "--no-progress"]) == 2
    assert "not a scenes3d dataset" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_package_does_not_load_the_renderer():
    code = "import sys, cir_core.data.scenes3d, cir_core.cli.data; assert 'mitsuba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ rendering and the folder
@pytest.fixture(scope="module")
def mitsuba():
    return pytest.importorskip("mitsuba", reason="rendering needs Mitsuba 3 (pip install mitsuba==3.9.1)")


@pytest.fixture(scope="module")
def dataset(mitsuba, tmp_path_factory):
    from cir_core.data.scenes3d import write_scenes3d_dataset

    out = tmp_path_factory.mktemp("scenes3d") / "bench"
    summary = write_scenes3d_dataset(out, seed=0, counts=TINY, workers=1, **TINY_RENDER)
    return out, summary


def folder_digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_written_folder_format(dataset):
    out, summary = dataset
    info = json.loads((out / "info.json").read_text())
    assert info["benchmark"] == "scenes3d" and info["version"] == 1 and info["image_size"] == 32
    assert info["renderer"]["samples_per_pixel"] == 4 and set(info["splits"]) == {"train", "val", "test"}
    assert info["image_format"] == "webp" and not list((out / "images").glob("*.png"))
    labels = json.loads((out / "scenes.json").read_text())
    images = {p.stem for p in (out / "images").glob("*.webp")}
    assert images == set(labels) and len(images) == summary.images == info["images"]
    for image_id, label in labels.items():
        view = View(Scene3D.from_dict(label), CameraPose.from_id(label["camera"]))
        assert view.id == image_id and view.scene.id == label["scene"]
        assert label["description"].startswith(camera_words(view.pose))
    for name in ("train", "val", "test"):
        gallery = json.loads((out / f"gallery_{name}.json").read_text())
        entries = json.loads((out / f"{name}.json").read_text())
        assert len(entries) == TINY.triplets(name) == summary.triplets[name] and set(gallery) <= images
        for pairid, entry in enumerate(entries):
            assert entry["pairid"] == pairid and entry["reference"] != entry["target"]
            target, reference = labels[entry["target"]], labels[entry["reference"]]
            assert (target["scene"], target["camera"]) == (entry["target_scene"], entry["target_camera"])
            assert (reference["scene"], reference["camera"]) == (entry["reference_scene"], entry["reference_camera"])
            for negative in entry["hard_negatives"]["views"]:
                assert labels[negative]["scene"] == entry["target_scene"]
                assert labels[negative]["camera"] != entry["target_camera"]
            for negative in entry["hard_negatives"]["edits"]:
                assert labels[negative]["camera"] == entry["target_camera"]
                assert labels[negative]["scene"] != entry["target_scene"]
            assert set(entry["hard_negatives"]["views"] + entry["hard_negatives"]["edits"]) <= set(gallery)
            assert entry["groups"] and set(entry["groups"]) <= set(info["groups"])
            assert (entry["object_edit"] is None) == (VIEW_ANGLE in entry["groups"])


def test_same_seed_same_bytes_with_any_worker_count(dataset, tmp_path):
    from cir_core.data.scenes3d import write_scenes3d_dataset

    out, _ = dataset
    write_scenes3d_dataset(tmp_path / "again", seed=0, counts=TINY, workers=2, **TINY_RENDER)
    assert folder_digest(tmp_path / "again") == folder_digest(out)
    write_scenes3d_dataset(tmp_path / "other", seed=1, counts=TINY, workers=1, **TINY_RENDER)
    assert folder_digest(tmp_path / "other")["test.json"] != folder_digest(out)["test.json"]


def test_cli_test_split_only(mitsuba, tmp_path, capsys):
    from cir_core.cli import main

    out = tmp_path / "only-test"
    assert main(["data", "scenes3d", "--out", str(out), "--train", "0", "--val", "0", "--test", "3",
                 "--image-size", "32", "--samples-per-pixel", "4", "--workers", "1", "--no-progress"]) == 0
    assert "test 3 queries" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["gallery_test.json", "images", "info.json", "scenes.json",
                                                     "test.json"]
    assert list(json.loads((out / "info.json").read_text())["splits"]) == ["test"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_cli_sets_the_train_sampling_and_the_image_format(mitsuba, tmp_path, capsys):
    from cir_core.cli import main
    from cir_core.data.scenes3d.read import read_scenes3d_split

    out = tmp_path / "train-png"
    assert main(["data", "scenes3d", "--out", str(out), "--train", "4", "--val", "0", "--test", "0",
                 "--train-edits-per-reference", "2", "--train-negatives", "1", "--image-format", "png",
                 "--image-size", "32", "--samples-per-pixel", "4", "--workers", "1", "--no-progress"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["image_format"] == "png" and info["splits"]["train"]["references"] == 2
    assert (info["sampling"]["train_edits_per_reference"], info["sampling"]["train_negatives"]) == (2, 1)
    entries = json.loads((out / "train.json").read_text())
    assert all(len(e["hard_negatives"]["views"]) == 1 and len(e["hard_negatives"]["edits"]) == 1 for e in entries)
    split = read_scenes3d_split(out, "train")
    assert all(path.suffix == ".png" and path.is_file() for path in split.image_paths.values())
    # A folder written before info.json named its format holds PNG.
    info.pop("image_format")
    (out / "info.json").write_text(json.dumps(info))
    assert read_scenes3d_split(out, "train").image_paths == split.image_paths
    assert main(["data", "scenes3d", "--out", str(tmp_path / "x"), "--train-negatives", "-1"]) == 2
    assert "--train-negatives must be 0 or more" in capsys.readouterr().err


def test_default_train_queries_share_their_reference_and_need_no_negatives():
    counts = Scenes3DCounts(train=40, val=0, test=0)
    train = plan_splits(seed=3, counts=counts, progress=False)["train"]
    references = {q.reference.id for q in train.queries}
    assert len(train.queries) == 40 and len(references) == 10
    assert all(not q.view_negatives and not q.edit_negatives for q in train.queries)
    # References, targets and a tenth more of distractors: a train query costs about 1.4 images.
    assert len(train.gallery) <= 40 * 1.25 * 1.1 + 1


def test_rendered_objects_stand_where_the_ray_caster_sees_them(mitsuba):
    """The renderer's camera and solids agree with the ray caster's (so left, right and visibility hold in
    the images): the object-or-not mask of a depth pass matches at pixel centres."""
    from cir_core.data.scenes3d import render

    mi = render._mitsuba()
    rng = random.Random(4)
    mirrored_agreement = []
    for _ in range(3):
        scene, size = sample_scene(rng), 48
        pose = CameraPose(rng.randrange(360), rng.choice(["low", "middle", "high"]), "medium")
        description = render.scene_description(scene, pose, size, 1, integrator={"type": "aov", "aovs": "d:depth"})
        for stage in ("floor", "table", "light"):
            del description[stage]
        description["sensor"]["film"]["rfilter"] = {"type": "box"}
        depth = np.asarray(mi.render(mi.load_dict(description), spp=1))[..., 0]
        hit, _ = object_masks(scene, pose, size)
        assert np.mean((depth > 0) == hit.any(axis=0)) > 0.97
        mirrored_agreement.append(np.mean((depth[:, ::-1] > 0) == hit.any(axis=0)))
    assert min(mirrored_agreement) < 0.95  # a mirrored camera convention would fail the check above


def test_render_view_is_deterministic_and_sized(mitsuba):
    from cir_core.data.scenes3d import render

    scene = sample_scene(random.Random(5))
    pose = CameraPose(10, "middle", "close")
    first = render.render_view(scene, pose, 32, 4, seed=7)
    assert first.size == (32, 32) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(render.render_view(scene, pose, 32, 4, seed=7)))
    pixels = np.asarray(first).reshape(-1, 3).astype(int)
    assert pixels.std() > 5  # not a blank frame


# ------------------------------------------------------------------ reading it back, as the app and trainer do
def test_the_registry_serves_a_scenes3d_split_with_its_groups_and_descriptions(dataset):
    from cir_core.data.registry import open_source

    out, _ = dataset
    source = open_source("scenes3d", out)  # the test split by default
    entries = json.loads((out / "test.json").read_text())
    labels = json.loads((out / "scenes.json").read_text())
    assert source.name == "scenes3d/test" and len(source.queries) == len(entries)
    assert [source.groups(t) for t in source.queries] == [tuple(entry["groups"]) for entry in entries]
    assert source.group_names()[0] == VIEW_ANGLE or VIEW_ANGLE not in source.group_names()
    texts, ids = source.caption_texts()
    assert texts == [labels[image_id]["description"] for image_id in ids] and set(ids) == set(source.split.gallery)
    first = source.queries[0]
    assert (first.extras["target_scene"], first.extras["target_camera"]) == (
        labels[first.target]["scene"], labels[first.target]["camera"])


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / "info.json").write_text(json.dumps({"benchmark": "shapes"})), "not a scenes3d benchmark"),
    (lambda out: (out / "gallery_test.json").write_text(json.dumps(["../../etc/passwd"])),
     "reference/target ids are not in"),
    (lambda out: (out / "test.json").write_text("[" * 100000), "nested too deeply"),
    (lambda out: (out / "info.json").write_text(json.dumps({**json.loads((out / "info.json").read_text()),
                                                            "image_format": "../x"})), "image format"),
    (lambda out: (out / "test.json").write_text(json.dumps([{"pairid": 0, "reference": "a"}])), "must be non-empty"),
])
def test_a_damaged_scenes3d_folder_is_one_clear_error(dataset, tmp_path, damage, message):
    import shutil

    from cir_core.data.scenes3d.read import read_scenes3d_split

    out = tmp_path / "copy"
    shutil.copytree(dataset[0], out)
    damage(out)
    with pytest.raises(ValueError, match=message):
        read_scenes3d_split(out, "test")


def test_an_image_id_leaving_the_folder_is_refused(dataset, tmp_path):
    import shutil

    from cir_core.data.scenes3d.read import read_scenes3d_split
    from cir_core.safe_paths import PathOutsideRootError

    out = tmp_path / "copy"
    shutil.copytree(dataset[0], out)
    entries = json.loads((out / "test.json").read_text())
    gallery = json.loads((out / "gallery_test.json").read_text())
    entries[0]["reference"] = "../../secret"
    (out / "test.json").write_text(json.dumps(entries))
    (out / "gallery_test.json").write_text(json.dumps(gallery + ["../../secret"]))
    with pytest.raises(PathOutsideRootError, match="has a '..' part"):
        read_scenes3d_split(out, "test")


def test_grouped_recall_counts_ranks_per_group_with_ties_against_the_target(dataset):
    import torch

    from cir_core.data.scenes3d.read import read_scenes3d_split
    from cir_core.evaluation.grouped_recall import grouped_recall_from_scores

    split = read_scenes3d_split(dataset[0], "test")
    column = {image_id: index for index, image_id in enumerate(split.gallery)}
    scores = torch.zeros(len(split.triplets), len(split.gallery))
    for row, triplet in enumerate(split.triplets):
        scores[row, column[triplet.reference]] = 9.0  # excluded: never counts
        scores[row, column[triplet.target]] = 1.0 if row % 2 == 0 else 0.0  # odd rows tie with every other image
    report = grouped_recall_from_scores(scores, split)
    assert report.ranks == [0 if row % 2 == 0 else len(split.gallery) - 2 for row in range(len(split.triplets))]
    expected = 100.0 * sum(row % 2 == 0 for row in range(len(split.triplets))) / len(split.triplets)
    assert report.recall["R@1"] == pytest.approx(expected)
    for name, figures in report.per_group.items():
        rows = [row for row, t in enumerate(split.triplets) if name in t.extras["groups"]]
        assert figures["queries"] == len(rows)
        assert figures["R@1"] == pytest.approx(100.0 * sum(row % 2 == 0 for row in rows) / len(rows))


def test_a_miss_is_classified_by_what_the_first_result_got_wrong():
    from cir_core.data.scenes3d.misses import OTHER_MISS, WRONG_EDIT, WRONG_VIEWPOINT, miss_kind

    target = ("table1", "az0-high-near")
    assert miss_kind(("table1", "az90-high-near"), target) == WRONG_VIEWPOINT
    assert miss_kind(("table2", "az0-high-near"), target) == WRONG_EDIT
    assert miss_kind(("table2", "az90-low-far"), target) == OTHER_MISS


def test_cir_eval_scenes3d_reports_recall_groups_misses_and_the_prompt(dataset, tiny_checkpoint, capsys):
    from cir_core.cli import main

    out, _ = dataset
    code = main(["eval", "scenes3d", "--data", str(out), "--model", f"local-dir:{tiny_checkpoint}", "--json",
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    entries = json.loads((out / "test.json").read_text())
    assert set(report["recall"]) == {"R@1", "R@5", "R@10", "R@50"} and report["num_queries"] == len(entries)
    groups = collections.Counter(group for entry in entries for group in entry["groups"])
    assert {name: figures["queries"] for name, figures in report["per_group"].items()} == dict(groups)
    misses = round(report["num_queries"] * (100 - report["recall"]["R@1"]) / 100)
    assert set(report["misses"]) == {"right scene, wrong viewpoint", "right viewpoint, wrong edit", "other"}
    assert sum(report["misses"].values()) == misses
    assert set(report["prompt"]) >= {"composed_top5", "prompt_top5"}
    assert (report["query_precision"], report["gallery_precision"]) == ("fp32", "fp32")
    assert main(["eval", "scenes3d", "--data", str(out / "nothing"), "--model", f"local-dir:{tiny_checkpoint}"]) == 2


def test_cir_eval_scenes3d_encodes_queries_as_the_app_does_at_int8(dataset, tiny_checkpoint, capsys, monkeypatch):
    import cir_core.evaluation.grouped_recall as grouped_recall
    from cir_core.cli import main

    out, _ = dataset
    asked = []
    real = grouped_recall.query_model
    monkeypatch.setattr(grouped_recall, "query_model", lambda model, precision: asked.append(precision) or
                        real(model, precision))
    argv = ["eval", "scenes3d", "--data", str(out), "--model", f"local-dir:{tiny_checkpoint}", "--json",
            "--no-progress", "--device", "cpu", "--no-prompt"]
    assert main(argv) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert main([*argv, "--query-precision", "int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert asked == ["fp32", "int8"] and int8["query_precision"] == "int8"
    assert int8["num_queries"] == fp32["num_queries"] and abs(int8["recall"]["R@5"] - fp32["recall"]["R@5"]) <= 50


def test_the_failure_view_names_what_each_scenes3d_miss_got_wrong(dataset, tiny_checkpoint, tmp_path):
    from cir_core.data.registry import open_source
    from cir_core.data.scenes3d.misses import MISS_KINDS
    from cir_core.engine import Engine
    from demo import render

    out, _ = dataset
    source = open_source("scenes3d", out)
    engine = Engine.from_uris(f"local-dir:{tiny_checkpoint}", source=source, cache_root=tmp_path / "cache",
                              progress=False)
    report = engine.benchmark_report()
    labels = json.loads((out / "scenes.json").read_text())
    assert list(report.misses) == list(MISS_KINDS) and sum(report.misses.values()) == len(report.failures)
    for case in report.failures:
        first, target = labels[case.top_id], labels[case.query.target_id]
        same = (first["scene"] == target["scene"], first["camera"] == target["camera"])
        expected = {(True, False): MISS_KINDS[0], (False, True): MISS_KINDS[1]}.get(same, MISS_KINDS[2])
        assert case.kind == expected and case.to_json()["miss_kind"] == expected
    line = render.failure_count_line(report, len(report.failures))
    assert all(kind in line for kind, count in report.misses.items() if count)
    if report.failures:
        (_, card_caption), = render.failure_gallery(report.failures[:1], lambda image_id: render.missing_picture(8))
        assert report.failures[0].kind in card_caption
