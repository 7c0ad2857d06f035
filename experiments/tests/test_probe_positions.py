"""The position probes: they must find position where it is written and not where it is not."""
import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("probe_positions",
                                              Path(__file__).parents[1] / "probe_positions.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_patch_place_probe_reads_positions_only_when_tokens_carry_them():
    torch.manual_seed(0)
    count, places, width = 200, 9, 16
    content = torch.randn(count, 1 + places, width)
    placed = content.clone()
    placed[:, 1:, :places] += 4 * torch.eye(places)  # each token also says where it is
    assert probe.patch_place_accuracy(placed, steps=150, seed=0) > 0.95
    assert probe.patch_place_accuracy(content, steps=150, seed=0) < 0.3  # chance is 1/9


def test_scene_probe_beats_the_majority_class_only_when_vectors_hold_the_scene():
    torch.manual_seed(0)
    cells = (torch.rand(400, 9) < 0.3).long() * torch.randint(1, 4, (400, 9))  # mostly empty
    written = torch.nn.functional.one_hot(cells, 4).float().view(400, 2, 18)  # (N, Q=2, D=18)
    accuracy, majority = probe.scene_accuracy(written, cells, steps=200, seed=0)
    assert accuracy > 0.95 and majority < 0.8
    noise_accuracy, _ = probe.scene_accuracy(torch.randn(400, 2, 18), cells, steps=200, seed=0)
    assert noise_accuracy < majority + 0.05


def test_bad_arguments_and_missing_data_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        probe.main(["--max-images", "3"])
    assert probe.main(["--data", str(tmp_path / "none"), "--model", "local-dir:" + str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_placement_similarity_is_one_only_when_vectors_ignore_the_place():
    torch.manual_seed(0)
    same = torch.randn(1, 4, 8).expand(9, 4, 8)  # every placement encoded alike
    assert torch.allclose(probe.placement_similarity(same), torch.ones(9, 9))
    placed = torch.randn(9, 4, 8)
    similarity = probe.placement_similarity(placed)
    assert torch.allclose(similarity.diagonal(), torch.ones(9))
    assert float(similarity[~torch.eye(9, dtype=torch.bool)].max()) < 0.99


def test_single_object_placements_reads_a_real_model(tiny_model):
    report = probe.single_object_placements(tiny_model, [("circle", "blue", "large")])
    assert set(report) == {"mean", "max", "min"} and -1.0 <= report["min"] <= report["mean"] <= report["max"] <= 1.0


def test_placement_choices_find_the_right_placement_and_its_margin():
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.4, 0.6]])
    right, margin = probe.placement_choices(scores, torch.tensor([0, 1]))
    assert right.tolist() == [True, False]
    assert torch.allclose(margin, torch.tensor([0.4, -0.2]))


def test_lone_object_queries_score_every_one_object_target(tiny_model, tmp_path):
    from cir_core.data.shapes import ShapesCounts, read_shapes_scenes, read_shapes_split, write_shapes_dataset

    data = tmp_path / "shapes"
    write_shapes_dataset(data, seed=3, image_size=32, counts=ShapesCounts(train=8, val=8, test=60),
                         progress=False, workers=1)
    split, scenes = read_shapes_split(data, "test"), read_shapes_scenes(data)
    lone = [t for t in split.triplets if len(scenes[t.target].objects) == 1]
    assert lone  # 60 queries hold some one-object targets
    report = probe.lone_object_queries(tiny_model, split, scenes, batch_size=4)
    assert report["queries"] == len(lone) and 0 <= report["right"] <= len(lone)
    totals = [int(counts.split("/")[1]) for counts in report["per_edit"].values()]
    assert sum(totals) == len(lone) and set(report["per_edit"]) == {t.edit for t in lone}


def test_an_unknown_query_split_is_refused_before_any_work(tiny_model, tmp_path, capsys):
    import cir_core
    from cir_core.data.shapes import ShapesCounts, write_shapes_dataset

    data = tmp_path / "shapes"
    write_shapes_dataset(data, seed=3, image_size=32, counts=ShapesCounts(train=8, val=8, test=8),
                         progress=False, workers=1)
    saved = cir_core.save_model(tiny_model, tmp_path / "tiny")
    assert probe.main(["--data", str(data), "--model", f"local-dir:{saved}", "--query-split", "nope"]) == 2
    assert "error:" in capsys.readouterr().err
