import collections
import json
import math
import types

import pytest
import torch

import cir_core
from cir_core.data.shapes import ShapesCounts, write_shapes_dataset
from cir_core.region_supervision import IGNORE, RegionHead
from cir_core.train import TripletSampler, main
from cir_core.train_config import TrainConfig


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "data"
    counts = ShapesCounts(train=96, val=16, test=16)
    write_shapes_dataset(out, seed=1, image_size=32, counts=counts, progress=False, workers=1)
    return out


def write_config(tmp_path, shapes_dir, **changes):
    config = {
        "out_dir": str(tmp_path / "run"),
        "data": {"kind": "shapes", "root": str(shapes_dir), "val_max_queries": 8},
        "model": {"preset": "tiny-test"},
        "batch_size": 8, "edits_per_reference": 4, "max_steps": 6, "eval_every": 3, "checkpoint_every": 3,
        "precision": "fp32", "progress": False, "num_threads": 1,
    }
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def read_log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_metrics_and_loadable_best(tmp_path, shapes_dir):
    config = write_config(tmp_path, shapes_dir)
    metrics = main(["--config", str(config)])
    assert "recall/R@1" in metrics
    run = tmp_path / "run"
    log = read_log(run)
    assert [r["step"] for r in log if "val" in r] == [3, 6]
    assert log[-1]["step"] == 6
    model = cir_core.load_model(run / "best")
    assert model.config.name == "tiny-test"
    saved = TrainConfig.from_file(run / "train_config.json")
    assert saved.max_steps == 6
    # The run records its own provenance: the code, the device and the data it trained on.
    from cir_core.data.folders import data_fingerprint

    start = log[0]
    assert start["step"] == 0 and start["device"].startswith("cpu (") and start["torch"] == torch.__version__
    assert start["data_sha256"] == data_fingerprint(shapes_dir) and len(start["data_sha256"]) == 16
    assert start["code_commit"] is None or len(start["code_commit"]) == 40


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, shapes_dir):
    from cir_core.train import Trainer

    base = TrainConfig.from_file(write_config(tmp_path, shapes_dir)).with_overrides({"eval_every": "0"})
    straight = Trainer(base.with_overrides({"out_dir": str(tmp_path / "straight")}))
    straight.run()

    interrupted_config = base.with_overrides({"out_dir": str(tmp_path / "interrupted")})
    interrupted = Trainer(interrupted_config)
    (tmp_path / "interrupted").mkdir()
    for _ in range(3):
        interrupted.train_step()
    interrupted.save_last()  # then the process dies
    resumed = Trainer(interrupted_config, resume=True)
    assert resumed.step == 3
    resumed.run()
    assert [r["step"] for r in read_log(tmp_path / "interrupted") if "loss" in r] == [6]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_resume_never_runs_code_from_the_state_file(tmp_path, shapes_dir, monkeypatch):
    from cir_core.train import TRAINER_STATE_FILE, Trainer

    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir)).with_overrides(
        {"eval_every": "0", "out_dir": str(tmp_path / "run")})
    trainer = Trainer(config)
    (tmp_path / "run").mkdir()
    trainer.train_step()
    trainer.save_last()
    state_path = tmp_path / "run" / "last" / TRAINER_STATE_FILE
    monkeypatch.chdir(tmp_path)
    torch.save({"step": 1, "payload": _RunsCodeWhenUnpickled()}, state_path)
    with pytest.raises(ValueError, match="not a readable trainer state"):
        Trainer(config, resume=True)
    assert not (tmp_path / "PWNED").exists()

    valid = {"step": 1}
    torch.save(valid, state_path)
    with pytest.raises(ValueError, match="lacks best, optimizer"):
        Trainer(config, resume=True)


def test_resume_from_a_truncated_state_is_one_line_error(tmp_path, shapes_dir):
    from cir_core.cli import main as cir_main
    from cir_core.train import TRAINER_STATE_FILE, Trainer

    config_file = write_config(tmp_path, shapes_dir)
    config = TrainConfig.from_file(config_file).with_overrides({"eval_every": "0", "out_dir": str(tmp_path / "run")})
    trainer = Trainer(config)
    (tmp_path / "run").mkdir()
    trainer.train_step()
    trainer.save_last()
    state_path = tmp_path / "run" / "last" / TRAINER_STATE_FILE
    state_path.write_bytes(state_path.read_bytes()[: state_path.stat().st_size // 2])
    assert cir_main(["train", "--config", str(config_file), "--resume", f"--out_dir={tmp_path / 'run'}",
                     "--eval_every=0"]) == 2


def test_overrides_and_bad_options(tmp_path, shapes_dir):
    config = write_config(tmp_path, shapes_dir)
    with pytest.raises(ValueError, match="unknown training option"):
        main(["--config", str(config), "--optim.learning_rate=1"])
    with pytest.raises(ValueError, match="overrides look like"):
        main(["--config", str(config), "stray"])
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        main(["--config", str(config), "--resume", "--out_dir=" + str(tmp_path / "fresh")])
    with pytest.raises(ValueError, match="cannot read training config"):
        main(["--config", str(tmp_path / "missing.json")])


@pytest.mark.parametrize("option, message", [
    ("--batch_size=0", "batch_size must be a whole number >= 1, got 0"),
    ("--checkpoint_every=0", "checkpoint_every must be a whole number >= 1, got 0"),
    ("--device=bogus", "device must be cpu, cuda or cuda:N, got 'bogus'"),
    ("--num_threads=-1", "num_threads must be a whole number >= 0, got -1"),
    ("--model.overrides=5", "model.overrides must be an object of dotted model config keys, got 5"),
    ("--save_dtype=float64", "save_dtype must be one of float32, float16, bfloat16, got 'float64'"),
    ("--optim.lr=-1e-4", "optim.lr must be a finite number >= 0, got -0.0001"),
    ("--optim.betas=[0.9, 1.5]", r"optim.betas must be a finite number >= 0 and < 1, got 1.5"),
    ("--max_steps=0", "max_steps must be a whole number >= 1, got 0"),
])
def test_bad_training_options_are_refused_before_training_starts(tmp_path, shapes_dir, capsys, option, message):
    from cir_core.cli import main as cir_main

    config = write_config(tmp_path, shapes_dir)
    assert cir_main(["train", "--config", str(config), option]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_existing_run_folder_needs_resume_or_overwrite(tmp_path, shapes_dir, capsys):
    from cir_core.cli import main as cir_main

    config = write_config(tmp_path, shapes_dir, eval_every=0, max_steps=2, checkpoint_every=2)
    assert cir_main(["train", "--config", str(config)]) == 0
    run = tmp_path / "run"
    before = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    capsys.readouterr()
    assert cir_main(["train", "--config", str(config), "--max_steps=4", "--checkpoint_every=4"]) == 2
    err = capsys.readouterr().err
    assert f"{run} already holds a run (train_config.json, metrics.jsonl, last, best)" in err and "--overwrite" in err
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == before  # nothing touched
    assert cir_main(["train", "--config", str(config), "--resume", "--overwrite"]) == 2
    assert cir_main(["train", "--config", str(config), "--overwrite", "--max_steps=4", "--checkpoint_every=4"]) == 0
    steps = [record["step"] for record in read_log(run) if "loss" in record]
    assert steps == [4]  # the earlier run's lines are gone, not appended to
    assert json.loads((run / "train_config.json").read_text())["max_steps"] == 4


def test_loss_falls_when_overfitting_one_batch(tmp_path, shapes_dir):
    config = write_config(tmp_path, shapes_dir)
    from cir_core.train import Trainer

    no_dropout = '{"qformer.hidden_dropout_prob": 0.0, "qformer.attention_probs_dropout_prob": 0.0}'
    trainer = Trainer(TrainConfig.from_file(config).with_overrides(
        {"max_steps": "80", "optim.lr": "0.003", "optim.vision_lr": "0.003", "optim.pct_start": "0.05",
         "model.overrides": no_dropout}))
    fixed = trainer.sampler.next_batch()
    trainer.sampler.next_batch = lambda: list(fixed)
    losses = [trainer.train_step()["itc"] for _ in range(80)]
    assert losses[0] == pytest.approx(math.log(8), abs=0.05)  # chance level: 8 look-alike targets
    assert sum(losses[-5:]) / 5 < 0.75 * math.log(8)


def test_region_supervision_learns_cells(tmp_path, shapes_dir):
    config = write_config(tmp_path, shapes_dir, shapes={"region_weight": 1.0})
    from cir_core.train import Trainer

    overrides = {"max_steps": "30", "optim.lr": "0.003", "optim.vision_lr": "0.003"}
    trainer = Trainer(TrainConfig.from_file(config).with_overrides(overrides))
    assert trainer.extras.region_head is not None and trainer.train_split.region_classes == (4, 8, 2)
    head = {id(p) for p in trainer.extras.region_head.parameters()}
    head_groups = [g for g in trainer.optimizer.param_groups if head & {id(p) for p in g["params"]}]
    assert len(head_groups) == 1 and head_groups[0]["max_lr"] == 0.003 and head_groups[0]["weight_decay"] == 0
    fixed = trainer.sampler.next_batch()
    trainer.sampler.next_batch = lambda: list(fixed)
    regions = [trainer.train_step()["region"] for _ in range(30)]
    assert regions[-1] < 0.6 * regions[0]
    (tmp_path / "run").mkdir()
    trainer.save_last()  # the head is no part of the model: --resume takes it from the trainer state
    resumed = Trainer(TrainConfig.from_file(config).with_overrides(overrides), resume=True)
    for mine, theirs in zip(trainer.extras.region_head.state_dict().values(),
                            resumed.extras.region_head.state_dict().values()):
        assert torch.equal(mine, theirs)


def test_region_head_ignores_missing_attributes():
    head = RegionHead(width=8, grid=3, classes=(4, 8, 2))
    features = torch.randn(2, 1 + 16, 8)
    labels = torch.full((2, 9, 3), IGNORE)
    labels[..., 0] = 0  # every cell empty: colour and size do not apply
    loss = head.loss(features, labels)
    expected = torch.nn.functional.cross_entropy(head(features)[0].flatten(0, 1), labels[..., 0].flatten())
    assert torch.allclose(loss, expected)


def test_sampler_groups_edits_and_never_repeats_a_target():
    from cir_core.data.triplets import Triplet

    triplets = [Triplet(i, f"r{i // 4}", "c", f"t{i}") for i in range(32)] + [Triplet(99, "r0", "c", "t0")]
    sampler = TripletSampler(triplets, batch_size=8, per_reference=4, seed=0)
    for _ in range(10):
        batch = sampler.next_batch()
        targets = [triplets[i].target for i in batch]
        assert len(batch) == 8 and len(set(targets)) == 8
    with pytest.raises(ValueError, match="exceeds"):
        TripletSampler(triplets[:4], batch_size=8, per_reference=4, seed=0)


def test_position_look_alikes_keep_the_objects_and_change_the_layout():
    import random

    from cir_core.data.shapes_negatives import position_look_alike
    from cir_core.data.shapes_scene import SceneObject, ShapesScene

    key = lambda scene: sorted((o.shape, o.color, o.size) for o in scene.objects)
    lone = ShapesScene((SceneObject(1, 1, "circle", "red", "large"),))
    pair = ShapesScene((SceneObject(0, 0, "circle", "red", "large"), SceneObject(2, 2, "square", "blue", "small")))
    rng = random.Random(0)
    seen_swap = False
    for scene in (lone, pair) * 20:
        other = position_look_alike(scene, rng)
        assert other.id != scene.id and key(other) == key(scene)
        changed = {o.cell for o in scene.objects} ^ {o.cell for o in other.objects}
        seen_swap |= not changed  # a swap keeps the occupied cells
    assert seen_swap
    twins = [SceneObject(r, c, "circle", "red", "large") for r in range(3) for c in range(3)]
    assert position_look_alike(ShapesScene(tuple(twins[:5])), rng) is not None  # a move is still possible


def test_position_look_alikes_are_spread_over_the_targets():
    import random
    from collections import Counter

    from cir_core.data.shapes_negatives import LookAlikes
    from cir_core.data.shapes_scene import SceneObject, ShapesScene

    scenes = {f"s{i}": ShapesScene((SceneObject(i % 3, 0, "circle", "red", "small"),
                                    SceneObject(2 - i % 3, 2, "square", "blue", "large"))) for i in range(3)}
    sampler = LookAlikes(scenes, image_size=32)
    key = lambda scene: tuple(sorted(o.appearance for o in scene.objects))
    twice = sampler.sample(sorted(scenes), 6, random.Random(1), avoid=set())
    assert len(twice) == 6 and len({s.id for s in twice}) == 6
    assert all(key(s) == key(scenes["s0"]) for s in twice)
    # no target id is ever returned, even when the layouts run out
    lone = {"a": ShapesScene((SceneObject(0, 0, "circle", "red", "small"),))}
    places = LookAlikes(lone, image_size=32).sample(["a"], 100, random.Random(0), avoid={lone["a"].id})
    assert 3 <= len(places) <= 8 and len({s.id for s in places}) == len(places)
    assert lone["a"].id not in {s.id for s in places}
    with pytest.raises(KeyError, match="no scene label"):
        sampler.sample(["s0", "missing"], 2, random.Random(0), avoid=set())


def test_inverse_objects_spread_gives_lone_objects_more_look_alikes():
    import random
    from collections import Counter

    from cir_core.data.shapes_negatives import LookAlikes
    from cir_core.data.shapes_scene import SceneObject, ShapesScene

    def scene(count, color):
        return ShapesScene(tuple(SceneObject(i // 3, i % 3, "circle", color, "small") for i in range(count)))

    scenes = {"lone": scene(1, "red"), "pair": scene(2, "blue"), "four": scene(4, "green")}
    sampler = LookAlikes(scenes, image_size=32)
    colour = lambda s: s.objects[0].color
    for spread, expected in [("even", {"red": 2, "green": 2, "blue": 2}),
                             ("inverse_objects", {"red": 4, "blue": 2, "green": 1})]:
        found = sampler.sample(sorted(scenes), 6 if spread == "even" else 7, random.Random(0), set(), spread=spread)
        assert Counter(colour(s) for s in found) == expected, spread
        assert all(len(s.objects) == len(scenes[{"red": "lone", "blue": "pair", "green": "four"}[colour(s)]].objects)
                   for s in found)
    # a batch with no lone object must not stall the passes that only lone objects take part in
    found = sampler.sample(["four"], 10, random.Random(0), set(), spread="inverse_objects")
    assert len(found) == 10 and len({s.id for s in found}) == 10
    with pytest.raises(ValueError, match="unknown look-alike spread 'uneven'"):
        sampler.sample(["lone"], 1, random.Random(0), set(), spread="uneven")


def test_position_negatives_are_rendered_into_the_candidates(tmp_path, shapes_dir):
    import random

    from cir_core.data.shapes_scene import render_scene
    from cir_core.train import Trainer

    trainer = Trainer(TrainConfig.from_file(write_config(tmp_path, shapes_dir, shapes={"position_negatives": 3})))
    look_alikes = trainer.extras.look_alikes
    triplets = [trainer.train_split.triplets[i] for i in trainer.sampler.next_batch()]
    targets = [t.target for t in triplets]
    scenes = look_alikes.sample(targets, 3, random.Random(0), set(targets))
    key = lambda scene: sorted((o.shape, o.color, o.size) for o in scene.objects)
    target_keys = [key(look_alikes.scenes[t]) for t in targets]
    assert len(scenes) == 3 and len({s.id for s in scenes}) == 3
    assert all(s.id not in targets and key(s) in target_keys for s in scenes)
    images = look_alikes.render(scenes)
    assert [i.tobytes() for i in images] == [render_scene(s, 32).tobytes() for s in scenes]
    pixels = trainer.images.batch(targets[:1], images)
    assert pixels.shape[0] == 4 and torch.allclose(pixels[1:], trainer.images.batch([], images))
    assert len(trainer.extras.extra_negatives(triplets, random.Random(0))) == 3
    assert math.isfinite(trainer.train_step()["loss"])


def test_edit_look_alikes_repeat_the_edit_with_another_outcome():
    import random

    from cir_core.data.shapes_edits import edit_scene
    from cir_core.data.shapes_negatives import edit_look_alike
    from cir_core.data.shapes_scene import SceneObject, ShapesScene

    reference = ShapesScene((SceneObject(0, 0, "circle", "red", "small"), SceneObject(1, 1, "square", "blue", "large"),
                             SceneObject(2, 2, "triangle", "green", "small")))
    rng = random.Random(3)
    for edit_type in ("remove", "color", "move", "add", "size"):
        target = edit_scene(reference, edit_type, rng).target
        for _ in range(10):
            other = edit_look_alike(reference, target, edit_type, rng)
            assert other is not None and other.id not in (target.id, reference.id)
            if edit_type == "remove":  # one object fewer, but not the one the caption named
                assert len(other.objects) == 2 and set(other.objects) < set(reference.objects)
            if edit_type in ("color", "size"):  # the same cells, one object changed
                assert {o.cell for o in other.objects} == {o.cell for o in reference.objects}
    mirrored = edit_scene(reference, "mirror", rng).target
    assert edit_look_alike(reference, mirrored, "mirror", rng) is None  # a mirror has one outcome


def test_edit_negatives_are_rendered_after_the_layouts(tmp_path, shapes_dir):
    import random

    from cir_core.train import Trainer

    trainer = Trainer(TrainConfig.from_file(write_config(tmp_path, shapes_dir, shapes={"position_negatives": 2,
                                                                                       "edit_negatives": 3})))
    triplets = [trainer.train_split.triplets[i] for i in trainer.sampler.next_batch()]
    targets = {t.target for t in triplets}
    scenes = trainer.extras.look_alikes.sample_edits(triplets, 3, random.Random(0), set(targets))
    assert len(scenes) == 3 and not {s.id for s in scenes} & targets
    references = [trainer.extras.look_alikes.scenes[t.reference] for t in triplets]
    appearances = lambda scene: sorted(o.appearance for o in scene.objects)

    def one_edit_apart(scene, reference):  # one object added, removed or changed, or the same objects moved
        return len(set(scene.objects) ^ set(reference.objects)) <= 2 or appearances(scene) == appearances(reference)

    assert all(any(one_edit_apart(scene, reference) for reference in references) for scene in scenes)
    assert len(trainer.extras.extra_negatives(triplets, random.Random(0))) == 5
    assert math.isfinite(trainer.train_step()["loss"])


@pytest.mark.parametrize("changes, message", [
    ({"shapes.position_negatives": -1}, "data.options.position_negatives must be a whole number >= 0"),
    ({"shapes.edit_negatives": -2}, "data.options.edit_negatives must be a whole number >= 0"),
    ({"data": {"kind": "cirr", "root": "."}, "shapes.position_negatives": 2},
     "data.options: cirr takes no option position_negatives"),
    ({"data": {"kind": "fashioniq", "root": "."}, "shapes.edit_negatives": 2, "shapes.region_weight": 1},
     r"data.options: fashioniq takes no option edit_negatives, region_weight \(its options: categories\)"),
    ({"shapes.position_negatives": 2, "shapes.position_negative_spread": "fair"},
     "data.options.position_negative_spread must be one of even, inverse_objects, got 'fair'"),
])
def test_position_negatives_option_is_checked(tmp_path, shapes_dir, changes, message):
    from cir_core.train import Trainer

    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir)).with_overrides(
        {key: json.dumps(value) for key, value in changes.items()})
    with pytest.raises(ValueError, match=message):
        Trainer(config)


def test_model_overrides_on_the_command_line(tmp_path, shapes_dir):
    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir)).with_overrides(
        {"model.overrides.qformer.num_query_tokens": "2", "model.overrides.loss.align_weight": "0.8"})
    assert config.model.overrides == {"qformer.num_query_tokens": 2, "loss.align_weight": 0.8}
    from cir_core.train import build_model

    model, _ = build_model(config)
    assert model.num_query_tokens == 2 and model.config.loss.align_weight == 0.8


@pytest.mark.parametrize("mode, fresh", [("image_prompt", set()), ("static_prompt", set()),
                                         ("pseudo_word", {"pseudo_word_projection.0.weight",
                                                          "pseudo_word_projection.0.bias",
                                                          "pseudo_word_projection.2.weight",
                                                          "pseudo_word_projection.2.bias"})])
def test_a_checkpoint_fine_tunes_in_another_query_mode(tmp_path, shapes_dir, tiny_checkpoint, mode, fresh):
    from cir_core.train import build_model

    def built(overrides):
        config = TrainConfig.from_file(write_config(tmp_path, shapes_dir, model={
            "checkpoint": f"local-dir:{tiny_checkpoint}", "overrides": overrides}))
        torch.manual_seed(3)
        return build_model(config), torch.rand(3)

    start = cir_core.load_model(f"local-dir:{tiny_checkpoint}").state_dict()
    (model, pretrained), after_build = built({"query_mode": mode, "loss.align_weight": 0.8})
    _, after_same_mode = built({"loss.align_weight": 0.8})
    assert torch.equal(after_build, after_same_mode)  # training draws as it would in the checkpoint's mode
    assert model.config.query_mode == mode and model.config.loss.align_weight == 0.8
    state = model.state_dict()
    assert set(state) - set(start) == fresh and not fresh & pretrained
    assert all(torch.equal(state[name], tensor) for name, tensor in start.items())  # every checkpoint weight kept
    model.eval()
    pixels = torch.randn(2, 3, 32, 32)
    assert model.encode_query(pixels, ["make it red", "remove it"]).query.shape == (2, 16)


def test_a_checkpoint_keeps_its_sizes(tmp_path, shapes_dir, tiny_checkpoint):
    from cir_core.train import build_model

    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir, model={
        "checkpoint": f"local-dir:{tiny_checkpoint}", "overrides": {"qformer.num_query_tokens": 2}}))
    with pytest.raises(ValueError, match=r"cannot override \['qformer.num_query_tokens'\] when starting from a "
                                         "checkpoint"):
        build_model(config)


@pytest.mark.parametrize("key, value, message", [
    ("shapes.position_negatives", "lots", "data.options.position_negatives: expected int, got 'lots'"),
    ("progress", "1", "train config.progress: expected bool, got 1"),
    ("shapes.region_weight", "true", "data.options.region_weight: expected float, got True"),
    ("data.options.colour", "1", "data.options: shapes takes no option colour"),
    ("model.overrides.vision.readout_positions", "maybe", "config.vision.readout_positions: expected bool"),
])
def test_option_values_of_the_wrong_type_are_refused(tmp_path, shapes_dir, key, value, message):
    from cir_core.train import build_model

    from cir_core.data.registry import dataset_spec

    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir))
    with pytest.raises(ValueError, match=message):
        changed = config.with_overrides({key: value})
        dataset_spec(changed.data.kind).parse_options(changed.data.options)  # as the trainer does first
        build_model(changed)  # model overrides are checked when the model is built
    region = config.with_overrides({"shapes.region_weight": "1"}).data.options
    assert dataset_spec("shapes").parse_options(region).region_weight == 1.0  # a whole number is a float


@pytest.mark.parametrize("native_bf16, asked, used", [
    (True, "auto", "bf16"), (False, "auto", "fp32"), (False, "bf16", "bf16"), (True, "fp32", "fp32")])
def test_training_precision_auto_follows_the_hardware(tmp_path, shapes_dir, monkeypatch, native_bf16, asked, used):
    import cir_core.precision
    from cir_core.train import Trainer

    monkeypatch.setattr(cir_core.precision, "has_native_bf16", lambda device: native_bf16)
    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir, precision=asked, max_steps=1, eval_every=0))
    trainer = Trainer(config)
    assert trainer.precision == used
    with trainer._autocast():
        assert torch.is_autocast_enabled("cpu") == (used == "bf16")
    trainer.run()
    start = read_log(tmp_path / "run")[0]
    assert {key: start[key] for key in ("step", "precision", "threads")} == {"step": 0, "precision": used, "threads": 1}


def test_unknown_training_precision_is_refused_before_anything_runs(tmp_path, shapes_dir):
    from cir_core.train import Trainer

    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir, precision="fp16"))
    with pytest.raises(ValueError, match="training precision must be one of auto, bf16, fp32, got 'fp16'"):
        Trainer(config)
    assert not (tmp_path / "run").exists()


def test_each_distinct_reference_is_encoded_once_with_the_same_values_and_gradients(tmp_path, shapes_dir):
    from cir_core.train import Trainer

    trainer = Trainer(TrainConfig.from_file(write_config(tmp_path, shapes_dir, shapes={"position_negatives": 2})))
    model = trainer.model.eval()  # no dropout: both ways must agree exactly
    triplets = [trainer.train_split.triplets[i] for i in trainer.sampler.next_batch()]
    references = [t.reference for t in triplets]
    assert len(set(references)) == 2 and len(references) == 8  # 4 edits per reference
    rendered = trainer.extras.extra_negatives(triplets, trainer.caption_rng)
    encoded = []
    vision_features = model.vision_features
    model.vision_features = lambda pixels: encoded.append(len(pixels)) or vision_features(pixels)
    captions = [t.caption for t in triplets]

    def vision_gradients(reference, target, negatives):
        model.zero_grad(set_to_none=True)
        model(reference, captions, target, negatives=negatives).loss.backward()
        return {name: p.grad.clone() for name, p in model.vision_model.named_parameters() if p.grad is not None}

    shared = trainer.batch_features(triplets, rendered)
    assert encoded == [2 + 8 + 2]
    shared_gradients = vision_gradients(*shared)
    every = (vision_features(trainer.images.batch(references)),
             vision_features(trainer.images.batch([t.target for t in triplets])),
             vision_features(trainer.images.batch([], rendered)))
    for mine, theirs in zip(shared, every):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    every_gradients = vision_gradients(*every)
    assert shared_gradients.keys() == every_gradients.keys() and shared_gradients
    for name, gradient in shared_gradients.items():
        torch.testing.assert_close(gradient, every_gradients[name], rtol=1e-4, atol=1e-6, msg=name)
    assert trainer.batch_features(triplets)[2] is None  # no extra negatives asked


def test_sampler_repeats_draw_a_triplet_that_many_times_per_pass():
    from cir_core.data.triplets import Triplet

    triplets = [Triplet(i, f"r{i // 4}", "c", f"t{i}") for i in range(32)]
    repeats = [3 if i % 4 == 0 else 1 for i in range(32)]
    sampler = TripletSampler(triplets, batch_size=8, per_reference=4, seed=0, repeats=repeats)
    sampler._refill()
    drawn = collections.Counter(sampler._order)
    assert all(drawn[i] == repeats[i] for i in range(32)) and len(sampler._order) == sum(repeats)
    for _ in range(12):
        batch = sampler.next_batch()
        assert len({triplets[i].target for i in batch}) == 8
    # Once each is exactly the sampler without repeats: same draws.
    plain = TripletSampler(triplets, batch_size=8, per_reference=4, seed=0)
    ones = TripletSampler(triplets, batch_size=8, per_reference=4, seed=0, repeats=[1] * 32)
    assert [plain.next_batch() for _ in range(9)] == [ones.next_batch() for _ in range(9)]
    with pytest.raises(ValueError, match="one count >= 1 per triplet"):
        TripletSampler(triplets, batch_size=8, per_reference=4, seed=0, repeats=[0] * 32)


def test_lone_target_repeats_draw_one_object_targets_more_often(tmp_path, shapes_dir):
    from cir_core.data.shapes import read_shapes_scenes
    from cir_core.train import Trainer

    scenes = read_shapes_scenes(shapes_dir)
    share = {}
    for repeats in (1, 3):
        (tmp_path / str(repeats)).mkdir()
        trainer = Trainer(TrainConfig.from_file(write_config(tmp_path / str(repeats), shapes_dir,
                                                             shapes={"lone_target_repeats": repeats})))
        triplets = trainer.train_split.triplets
        lone = [len(scenes[t.target].objects) == 1 for t in triplets]
        if repeats == 1:
            assert trainer.sampler.repeats is None
        else:
            assert trainer.sampler.repeats == [3 if one else 1 for one in lone]
        trainer.sampler._refill()
        order = trainer.sampler._order
        share[repeats] = sum(lone[i] for i in order) / len(order)
    base = share[1]
    assert 0 < base < 1 and math.isclose(share[3], 3 * base / (3 * base + 1 - base))


@pytest.mark.parametrize("changes, message", [
    ({"shapes.lone_target_repeats": 0}, "data.options.lone_target_repeats must be a whole number >= 1, got 0"),
    ({"data": {"kind": "cirr", "root": "."}, "shapes.lone_target_repeats": 2},
     "data.options: cirr takes no option lone_target_repeats"),
])
def test_lone_target_repeats_option_is_checked(tmp_path, shapes_dir, changes, message):
    from cir_core.train import Trainer

    config = TrainConfig.from_file(write_config(tmp_path, shapes_dir)).with_overrides(
        {key: json.dumps(value) for key, value in changes.items()})
    with pytest.raises(ValueError, match=message):
        Trainer(config)


def test_description_term_trains_on_shapes_descriptions(tmp_path, shapes_dir):
    config = write_config(tmp_path, shapes_dir, model={"preset": "tiny-test",
                                                        "overrides": {"loss.description_weight": 1.0}})
    main(["--config", str(config), "--eval_every=0"])
    steps = [record for record in read_log(tmp_path / "run") if "loss" in record]
    assert steps and all(record["description"] > 0 for record in steps)
    assert cir_core.load_model(tmp_path / "run" / "best").config.loss.description_weight == 1.0


def test_description_term_needs_described_images(tmp_path, shapes_dir, monkeypatch):
    import dataclasses

    from cir_core.data.registry import DATASETS

    shapes = DATASETS["shapes"]
    undescribed = dataclasses.replace(shapes, read_split=lambda root, split, options, for_training=False,
                                      descriptions=False: shapes.read_split(root, split, options, for_training))
    monkeypatch.setitem(DATASETS, "shapes", undescribed)
    config = write_config(tmp_path, shapes_dir, model={"preset": "tiny-test",
                                                        "overrides": {"loss.description_weight": 1.0}})
    with pytest.raises(ValueError, match="needs image descriptions"):
        main(["--config", str(config)])


def test_configs_written_before_the_shapes_section_read_the_same(tmp_path, shapes_dir):
    """Flat shapes options and the `shapes` section (configs and run folders of earlier versions) land
    in `data.options`; removed options read when they hold their "off" value and are refused otherwise."""
    current = TrainConfig.from_file(write_config(tmp_path, shapes_dir, shapes={
        "position_negatives": 96, "edit_negatives": 64, "position_negative_spread": "inverse_objects",
        "lone_target_repeats": 3, "region_weight": 1.0}))
    flat = write_config(tmp_path, shapes_dir, position_negatives=96, edit_negatives=64,
                        position_negative_spread="inverse_objects", lone_target_repeats=3, region_weight=1.0,
                        hard_negatives=0, locate_patches=False, scene_weight=0.0, optim={"head_lr": 0.0})
    assert TrainConfig.from_file(flat) == current
    assert current.data.options["lone_target_repeats"] == 3
    assert current.with_overrides({"lone_target_repeats": "1", "hard_negatives": "0"}).data.options[
        "lone_target_repeats"] == 1
    # the old defaults every run file listed say nothing: FashionIQ's categories are not handed to shapes
    listed = TrainConfig.from_file(write_config(tmp_path, shapes_dir, data={
        "kind": "shapes", "root": str(shapes_dir), "categories": ["dress", "shirt", "toptee"]}, region_weight=0.0))
    assert listed.data.options == {}
    for name, removed in (("hard_negatives", {"hard_negatives": 16}), ("scene_weight", {"scene_weight": 1.0}),
                          ("locate_patches", {"locate_patches": True}), ("optim.head_lr", {"optim": {"head_lr": 0.01}})):
        with pytest.raises(ValueError, match=f"{name} has been removed"):
            TrainConfig.from_file(write_config(tmp_path, shapes_dir, **removed))
    with pytest.raises(ValueError, match="hard_negatives has been removed"):
        current.with_overrides({"hard_negatives": "16"})
    with pytest.raises(ValueError, match="shapes.region_weight and region_weight both given"):
        TrainConfig.from_file(write_config(tmp_path, shapes_dir, region_weight=1.0, shapes={"region_weight": 0.5}))


def test_the_trainer_takes_everything_dataset_specific_from_the_registry(tmp_path, shapes_dir, monkeypatch):
    """A dataset added to the registry trains with its own reader, extras, evaluator and headline metric."""
    import dataclasses

    from PIL import Image

    from cir_core.data.registry import DATASETS
    from cir_core.data.spec import TrainingExtras
    from cir_core.evaluation import protocols

    seen = []

    class OneGreyNegative(TrainingExtras):
        def extra_negatives(self, triplets, rng):
            seen.append(len(triplets))
            return [Image.new("RGB", (32, 32), (128, 128, 128))]

    def report(model, validation):
        return types.SimpleNamespace(to_dict=lambda: {"toy": {"score": 50.0 + len(seen)}})

    shapes = DATASETS["shapes"]
    toy = dataclasses.replace(shapes, name="toy", protocol="toy", headline_metric="toy/score",
                              training_extras=lambda options, root, model, split, device: OneGreyNegative())
    monkeypatch.setitem(DATASETS, "toy", toy)
    monkeypatch.setitem(protocols.EVALUATORS, "toy", report)
    config = write_config(tmp_path, shapes_dir, data={"kind": "toy", "root": str(shapes_dir), "val_max_queries": 8})
    metrics = main(["--config", str(config)])
    assert seen == [8] * 6 and metrics == {"toy/score": 56.0}
    assert [r["best"] for r in read_log(tmp_path / "run") if "val" in r] == [53.0, 56.0]
