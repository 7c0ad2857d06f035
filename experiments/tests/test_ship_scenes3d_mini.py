"""experiments/ship_scenes3d_mini.py on a two-step run over a tiny rendered scenes3d folder:
the card's figures are the ones `cir eval scenes3d` prints, the run's provenance is its own,
the seed serves the shipped gallery and the examples point at real queries."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ship_scenes3d_mini as ship  # noqa: E402

pytest.importorskip("mitsuba")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    from cir_core.data.scenes3d import Scenes3DCounts, write_scenes3d_dataset
    from cir_core.train import Trainer
    from cir_core.train_config import TrainConfig

    root = tmp_path_factory.mktemp("ship")
    render = {"image_size": 32, "samples_per_pixel": 2, "progress": False, "workers": 1}
    write_scenes3d_dataset(root / "data", seed=0, counts=Scenes3DCounts(train=16, val=4, test=0), **render)
    write_scenes3d_dataset(root / "test", seed=4242, counts=Scenes3DCounts(train=0, val=0, test=12), **render)
    config = TrainConfig.from_dict({
        "out_dir": str(root / "run"), "data": {"kind": "scenes3d", "root": str(root / "data"), "val_max_queries": 4},
        "model": {"preset": "tiny-test"}, "batch_size": 8, "edits_per_reference": 4, "max_steps": 2,
        "eval_every": 1, "checkpoint_every": 1, "precision": "fp32", "progress": False, "num_threads": 1})
    Trainer(config).run()
    out, examples = root / "checkpoints" / "scenes3d-tiny", root / "examples.json"
    assert ship.main(["--run", str(root / "run"), "--test-data", str(root / "test"), "--out", str(out),
                      "--examples", str(examples), "--batch-size", "8"]) == 0
    return root, out, examples


def test_the_card_reports_what_cir_eval_prints(shipped, capsys):
    from cir_core.cli import main

    root, out, _ = shipped
    capsys.readouterr()
    assert main(["eval", "scenes3d", "--model", f"local-dir:{out}", "--data", str(root / "test"), "--json",
                 "--no-progress", "--device", "cpu", "--batch-size", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    training = json.loads((out / "training.json").read_text())
    assert training["test"] == printed
    assert json.loads((out / "config.json").read_text())["name"] == "scenes3d-tiny"  # named after its folder
    card = (out / "README.md").read_text()
    assert f"| all | {printed['num_queries']} | {printed['recall']['R@1']:.1f} | {printed['recall']['R@5']:.1f} |" in card
    for group, figures in printed["per_group"].items():
        assert f"| {group} | {figures['queries']} | {figures['R@1']:.1f} |" in card
    assert set(training["int8_queries"]["per_group"]) == set(printed["per_group"])


def test_the_run_records_its_own_provenance(shipped):
    from cir_core.data.folders import data_fingerprint

    root, out, _ = shipped
    run = json.loads((out / "training.json").read_text())["run"]
    assert run["started"]["data_sha256"] == data_fingerprint(root / "data")
    assert run["steps"] == 2 and [point[0] for point in run["validation_r1_curve"]] == [1, 2]
    assert run["best_step"] in (1, 2) and run["started"]["device"].startswith("cpu")
    card = (out / "README.md").read_text()
    assert run["started"]["data_sha256"] in card and str(run["started"]["code_commit"]) in card
    assert json.loads((out / "training.json").read_text())["test_data_sha256"] == data_fingerprint(root / "test")


def test_the_seed_serves_the_shipped_gallery_and_the_examples_are_real_queries(shipped):
    import numpy as np

    from cir_core.data.registry import open_source

    root, out, examples = shipped
    source = open_source("scenes3d", root / "test")
    with np.load(out / "gallery_index_seed.npz") as seed:
        assert sorted(seed["ids"].tolist()) == sorted(source.split.gallery)
    queries = {str(q.pairid): q for q in source.queries}
    entries = json.loads(examples.read_text())["queries"]
    assert entries and all((queries[str(e["pairid"])].reference, queries[str(e["pairid"])].target,
                            queries[str(e["pairid"])].caption) == (e["reference"], e["target"], e["caption"])
                           for e in entries)
    view_angle = [e for e in entries if "view angle" in e["groups"]]
    assert all(e["target_rank"] >= 1 for e in entries)
    if view_angle:  # successes before failures
        ranks = [e["target_rank"] == 1 for e in view_angle]
        assert ranks == sorted(ranks, reverse=True)
