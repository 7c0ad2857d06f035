"""`cir eval` and `cir submit` end to end with the tiny checkpoint on stand-in dataset folders."""
import json

import pytest

from cir_core.cli import main
from cir_core.data.cirr import read_cirr
from cir_core.data.fashioniq import read_fashioniq
from cir_core.evaluation.cirr import evaluate_cirr
from cir_core.evaluation.fashioniq import evaluate_fashioniq
from test_cirr import make_cirr_standin, needs_real_files as needs_cirr_files
from test_fashioniq import make_fashioniq_standin, needs_real_files as needs_fashioniq_files

COMMON = ["--device", "cpu", "--no-progress", "--batch-size", "16"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cirr_root(tmp_path_factory):
    return make_cirr_standin(tmp_path_factory.mktemp("cirr"), query_sets=1, gallery_size=10)


@needs_cirr_files
def test_eval_cirr_json_matches_the_library(capsys, cirr_root, tiny_checkpoint, tiny_model):
    code, out, _ = run(capsys, "eval", "cirr", "--data-root", cirr_root, "--model", f"local-dir:{tiny_checkpoint}",
                       "--json", *COMMON)
    assert code == 0
    report = json.loads(out)
    expected = evaluate_cirr(tiny_model, read_cirr(cirr_root, "val"), progress=False).to_dict()
    assert report["split"] == "cirr/val" and report["num_queries"] == expected["num_queries"] == 8
    assert report["recall"] == pytest.approx(expected["recall"])
    assert report["recall_subset"] == pytest.approx(expected["recall_subset"])
    assert report["average"] == pytest.approx((report["recall"]["R@5"] + report["recall_subset"]["Rsubset@1"]) / 2)


@needs_cirr_files
def test_eval_cirr_text_and_cached_features(capsys, cirr_root, tiny_checkpoint, tmp_path):
    code, out, _ = run(capsys, "eval", "cirr", "--data-root", cirr_root, "--model", tiny_checkpoint,
                       "--save-features", tmp_path, "--cache-reference-features", *COMMON)
    assert code == 0
    assert "cirr/val: 8 queries" in out and "R@50" in out and "Rsubset@3" in out and "(R@5 + Rsubset@1)/2" in out
    assert (tmp_path / "cirr_val.pt").is_file()
    code, cached_out, _ = run(capsys, "eval", "cirr", "--data-root", cirr_root, "--from-features", tmp_path,
                              "--no-progress")
    assert code == 0 and cached_out == out


@needs_cirr_files
def test_eval_errors_are_one_line(capsys, cirr_root, tmp_path):
    code, _, err = run(capsys, "eval", "cirr", "--data-root", cirr_root, *COMMON)
    assert code == 2 and "--model is required" in err
    code, _, err = run(capsys, "eval", "cirr", "--data-root", tmp_path, "--model", "local-dir:/nowhere", *COMMON)
    assert code == 2 and "cap.rc2.val.json is missing" in err and "Traceback" not in err
    code, _, err = run(capsys, "eval", "cirr", "--data-root", cirr_root, "--from-features", tmp_path, *COMMON)
    assert code == 2 and "cirr_val.pt does not exist" in err
    code, _, err = run(capsys, "eval", "cirr", "--data-root", cirr_root, "--image-root", tmp_path,
                       "--model", "local-dir:/nowhere", *COMMON)
    assert code == 2 and f"10 of 10 images listed in cirr/image_splits/split.rc2.val.json are missing under {tmp_path}/dev" in err
    code, _, err = run(capsys, "eval", "cirr", "--data-root", cirr_root, "--model", "local-dir:/nowhere", *COMMON)
    assert code == 2 and "model folder /nowhere does not exist" in err
    code, _, err = run(capsys, "eval", "fashioniq", "--data-root", tmp_path, "--model", "x", "--categories", "skirt")
    assert code == 2 and "--categories must list some of dress, shirt, toptee" in err


@needs_cirr_files
def test_eval_cirr_reports_missing_images(capsys, tmp_path, tiny_checkpoint):
    root = make_cirr_standin(tmp_path, query_sets=1, gallery_size=8)
    next((root / "dev").iterdir()).unlink()
    code, _, err = run(capsys, "eval", "cirr", "--data-root", root, "--model", tiny_checkpoint, *COMMON)
    assert code == 2 and "1 of 8 images listed in cirr/image_splits/split.rc2.val.json are missing" in err


@needs_fashioniq_files
def test_eval_fashioniq_end_to_end(capsys, tmp_path, tiny_checkpoint, tiny_model):
    root = make_fashioniq_standin(tmp_path, categories=("dress", "toptee"), queries=3, gallery_size=14)
    args = ["eval", "fashioniq", "--data-root", root, "--model", tiny_checkpoint, "--categories", "dress,toptee", *COMMON]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    report = json.loads(out)
    splits = {c: read_fashioniq(root, c, "val") for c in ("dress", "toptee")}
    expected = evaluate_fashioniq(tiny_model, splits, progress=False).to_dict()
    assert report["num_queries"] == {"dress": 3, "toptee": 3}
    for category in ("dress", "toptee"):
        assert report["categories"][category] == pytest.approx(expected["categories"][category])
    assert report["average"] == pytest.approx(expected["average"])
    code, out, _ = run(capsys, *args)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["category", "queries", "R@10", "R@50"]
    assert [line.split()[0] for line in lines[1:4]] == ["dress", "toptee", "average"]
    assert lines[3].split()[1:] == ["6", f"{expected['recall']['R@10']:.2f}", f"{expected['recall']['R@50']:.2f}"]


@needs_cirr_files
def test_submit_cirr_writes_both_files(capsys, tmp_path, tiny_checkpoint):
    root = make_cirr_standin(tmp_path / "data", query_sets=1, gallery_size=54, split="test1")
    code, out, _ = run(capsys, "submit", "cirr", "--data-root", root, "--model", tiny_checkpoint,
                       "--out", tmp_path / "out", "--name", "tiny", "--json", *COMMON)
    assert code == 0
    written = json.loads(out)
    assert written["num_queries"] == 8
    recall = json.loads((tmp_path / "out" / "recall_submission_tiny.json").read_text())
    subset = json.loads((tmp_path / "out" / "recall_subset_submission_tiny.json").read_text())
    assert written["recall_file"] == str(tmp_path / "out" / "recall_submission_tiny.json")
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    assert len(recall) == len(subset) == 8 + 2
    assert all(len(names) == 50 for key, names in recall.items() if key not in ("version", "metric"))


def test_eval_shapes_end_to_end(capsys, tmp_path, tiny_checkpoint, tiny_model):
    from cir_core.data.shapes import read_shapes_split, write_shapes_dataset
    from cir_core.data.shapes_splits import ShapesCounts
    from cir_core.evaluation.shapes import evaluate_shapes

    data = tmp_path / "shapes"
    write_shapes_dataset(data, seed=0, image_size=32, counts=ShapesCounts(train=4, val=2, test=6), progress=False,
                         workers=1)
    args = ["eval", "shapes", "--data", data, "--model", tiny_checkpoint, *COMMON]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    report = json.loads(out)
    expected = evaluate_shapes(tiny_model, read_shapes_split(data, "test"), progress=False).to_dict()
    assert report["num_queries"] == expected["num_queries"] == 6
    assert report["recall"] == pytest.approx(expected["recall"])
    misses = sum(rank > 0 for rank in evaluate_shapes(tiny_model, read_shapes_split(data, "test"), progress=False).ranks)
    assert set(report["confusions"]) == {"position", "attribute", "count", "other"}
    assert sum(report["confusions"].values()) == misses
    counts = report["object_counts"]  # by objects in the target; together they are all the queries
    assert sum(counts.values()) == 6 and set(counts) == set(report["per_object_count"])
    weighted = sum(report["per_object_count"][n]["R@1"] * counts[n] for n in counts) / 6
    assert weighted == pytest.approx(report["recall"]["R@1"])
    from cir_core.data.shapes import read_shapes_scenes
    from cir_core.evaluation.prompt_faithfulness import shapes_prompt_faithfulness

    direct = shapes_prompt_faithfulness(tiny_model, read_shapes_split(data, "test"), read_shapes_scenes(data),
                                        progress=False).to_dict()
    assert report["prompt"] == pytest.approx(direct) and report["prompt"]["queries"] == 6
    assert report["prompt"]["remove_queries"] == expected["edit_counts"].get("remove", 0)
    code, out, _ = run(capsys, *args)
    assert f"composed query {direct['composed_top5']:.1f}%" in out
    lines = [line for line in out.splitlines() if not line.startswith(("first result wrong", "target description"))]
    assert (f"first result wrong ({misses})" in out) == (misses > 0)
    assert code == 0 and lines[0].startswith("shapes/test: 6 queries")
    assert lines[1].split() == ["queries", "n", "R@1", "R@5", "R@10", "R@50"]
    assert lines[2].split() == ["all", "6"] + [f"{expected['recall'][k]:.2f}" for k in ("R@1", "R@5", "R@10", "R@50")]
    per_edit = {line.split()[0]: int(line.split()[1]) for line in lines[3:] if " object" not in line}
    by_objects = {line.split()[0]: int(line.split()[2]) for line in lines[3:] if " object" in line}
    assert by_objects == counts
    assert {edit: per_edit[edit] for edit in expected["edit_counts"]} == expected["edit_counts"]
    code, _, err = run(capsys, "eval", "shapes", "--data", tmp_path / "none", "--model", tiny_checkpoint, *COMMON)
    assert code == 2 and str(tmp_path / "none") in err
    code, out, _ = run(capsys, *args, "--json", "--query-precision", "int8")
    int8 = evaluate_shapes(tiny_model, read_shapes_split(data, "test"), progress=False, query_precision="int8")
    assert code == 0 and json.loads(out)["query_precision"] == "int8"
    assert json.loads(out)["recall"] == pytest.approx(int8.to_dict()["recall"])
    code, out, _ = run(capsys, *args, "--json", "--gallery-precision", "int8")
    int8_gallery = evaluate_shapes(tiny_model, read_shapes_split(data, "test"), progress=False, gallery_precision="int8")
    assert code == 0 and json.loads(out)["gallery_precision"] == "int8"
    assert json.loads(out)["recall"] == pytest.approx(int8_gallery.to_dict()["recall"])
    with pytest.raises(SystemExit):  # argparse names the choices
        main([str(a) for a in args] + ["--query-precision", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_submit_cirr_refuses_repeated_pairids_and_no_queries(capsys, tmp_path):
    from test_cirr import SMALL_RELPATHS, small_record, write_cirr_annotations

    root = write_cirr_annotations(tmp_path / "data", [small_record(5), small_record(5, reference="c")], SMALL_RELPATHS,
                                  split="test1")
    argv = ["submit", "cirr", "--data-root", root, "--model", "local-dir:/nowhere", "--out", tmp_path / "out"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "pairids must be unique; 1 appear more than once (5)" in err
    write_cirr_annotations(tmp_path / "data", [], SMALL_RELPATHS, split="test1")
    code, _, err = run(capsys, *argv)
    assert code == 2 and "cap.rc2.test1.json holds no queries" in err
    assert not (tmp_path / "out").exists()
