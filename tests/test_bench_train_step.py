"""The training-step benchmark times the parts of a real step of a recipe."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cir_core.data.shapes import ShapesCounts, write_shapes_dataset

spec = importlib.util.spec_from_file_location("bench_train_step",
                                              Path(__file__).parents[1] / "benchmarks" / "bench_train_step.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_train")
    write_shapes_dataset(root / "data", seed=2, image_size=32, counts=ShapesCounts(train=48, val=8, test=8),
                         progress=False, workers=1)
    config = {"out_dir": str(root / "unused"), "data": {"kind": "shapes", "root": str(root / "data")},
              "model": {"preset": "tiny-test"}, "batch_size": 8, "edits_per_reference": 4, "max_steps": 20,
              "precision": "fp32", "num_threads": 1, "position_negatives": 3}
    path = root / "recipe.json"
    path.write_text(json.dumps(config))
    return path


def test_reports_each_part_against_the_whole_step(recipe, capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--config", str(recipe), "--steps", "3", "--edit_negatives=2"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert report["rendered_scenes_per_step"] == 5  # 3 layout and 2 edit look-alikes: the override took effect
    median = report["median_ms"]
    assert 0 < median["render look-alikes"] < median["whole step"] and median["prepare pixels"] > 0
    assert 0 < report["share_of_step"]["render look-alikes"] < 1
    assert not (recipe.parent / "unused").exists()  # the benchmark writes no run folder


def test_bad_arguments_are_refused(recipe, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--config", str(recipe), "--steps", "1"])
    assert bench.main(["--config", str(recipe), "max_steps"]) == 2
    assert "overrides look like" in capsys.readouterr().err
    assert bench.main(["--config", str(tmp_path / "none.json")]) == 2
    assert "error:" in capsys.readouterr().err
