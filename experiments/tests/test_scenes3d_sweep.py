"""The results sweep on the scenes3d benchmark, end to end on a tiny rendered folder: two rows of
two steps from a checkpoint, in query modes other than the checkpoint's, then the results page."""
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import cir_core

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))
import scenes3d_results as page  # noqa: E402
import shapes_sweep as sweep  # noqa: E402

ROWS = "scenes3d/image_prompt/seed0,scenes3d/pseudo_word/seed0"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model):
    """A tiny scenes3d folder, a tiny checkpoint and the 3D recipe's shape on them."""
    pytest.importorskip("mitsuba", reason="rendering needs Mitsuba 3 (pip install mitsuba==3.9.1)")
    from cir_core.data.scenes3d import Scenes3DCounts, write_scenes3d_dataset

    root = tmp_path_factory.mktemp("scenes3d-sweep")
    write_scenes3d_dataset(root / "data", seed=0, counts=Scenes3DCounts(train=16, val=2, test=8), workers=1,
                           image_size=32, samples_per_pixel=4, progress=False)
    cir_core.save_model(tiny_model, root / "start")
    recipe = json.loads((ROOT / "configs" / "scenes3d_mini.json").read_text())
    recipe["model"] = {**recipe["model"], "preset": "tiny-test", "checkpoint": f"local-dir:{root / 'start'}"}
    recipe.update(batch_size=8, precision="fp32", num_threads=1)
    (root / "recipe.json").write_text(json.dumps(recipe))
    return root


def sweep_args(tiny, out, *extra):
    return ["--benchmark", "scenes3d", "--data", str(tiny / "data"), "--config", str(tiny / "recipe.json"),
            "--out", str(out), "--device", "cpu", "--threads", "1", "--poll-seconds", "0.2", *extra]


def test_rows_of_the_3d_question_are_listed_seeds_first():
    names = [row.name for row in sweep.BENCHMARKS["scenes3d"].rows]
    assert names[:4] == ["scenes3d/sprc/seed0", "scenes3d/image_prompt/seed0", "scenes3d/static_prompt/seed0",
                         "scenes3d/late_fusion/seed0"]
    assert len(names) == len(set(names)) == 13 and names[-1] == "scenes3d/pseudo_word/seed0"
    assert {row.overrides.get("model.overrides.query_mode", '"sprc"').strip('"') for row in
            sweep.BENCHMARKS["scenes3d"].rows} == {"sprc", "image_prompt", "static_prompt", "late_fusion", "pseudo_word"}


def test_a_recipe_of_another_benchmark_or_a_missing_folder_is_refused(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(sweep_args(tiny, tmp_path) + ["--config", str(ROOT / "configs" / "shapes_mini.json")])
    assert "trains on shapes, not scenes3d" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.parse_args(sweep_args(tiny, tmp_path) + ["--data", str(tmp_path / "none")])
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.parse_args(sweep_args(tiny, tmp_path, "--rows", "sprc/seed0"))  # a shapes row
    assert "unknown scenes3d rows ['sprc/seed0']" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_writes_scenes3d_rows_with_their_report_and_provenance(tiny, tmp_path):
    out = tmp_path / "out"
    assert sweep.main(sweep_args(tiny, out, "--rows", ROWS, "--steps", "2", "--parallel", "2")) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == sorted(ROWS.split(","))
    entries = json.loads((tiny / "data" / "test.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for row in rows:
        page.check_row(row, "rows.jsonl")  # raises on a missing field or provenance
        assert row["benchmark"] == "scenes3d" and row["query_mode"] == row["group"] and row["steps"] == 2
        assert row["code_commit"] == head and isinstance(row["code_dirty"], bool)
        assert row["data_sha256"] == sweep.data_fingerprint(tiny / "data")
        assert row["recipe_sha256"] == hashlib.sha256((tiny / "recipe.json").read_bytes()).hexdigest()[:16]
        assert row["device"].startswith("cpu") and row["train_seconds"] > 0 and row["eval_seconds"] > 0
        report = row["report"]
        assert report["num_queries"] == len(entries) and set(report["recall"]) == {"R@1", "R@5", "R@10", "R@50"}
        groups = Counter(group for entry in entries for group in entry["groups"])
        assert {name: figures["queries"] for name, figures in report["per_group"].items()} == dict(groups)
        assert list(report["per_group"])[0] in ("view angle", "view + object")  # the camera groups lead
        assert set(report["misses"]) == {"right scene, wrong viewpoint", "right viewpoint, wrong edit", "other"}
        assert sum(report["misses"].values()) == round(len(entries) * (100 - report["recall"]["R@1"]) / 100)
        assert "prompt" not in report  # every mode reports the same figures
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["row"] for r in logged} == set(ROWS.split(","))
    start = json.loads((tiny / "start" / "config.json").read_text())
    for name, mode in (("image_prompt", "image_prompt"), ("pseudo_word", "pseudo_word")):
        trained = json.loads((out / "work" / f"scenes3d-{name}-seed0" / "best" / "config.json").read_text())
        assert trained["query_mode"] == mode and start["query_mode"] == "sprc"
        assert trained["loss"]["description_weight"] == 1.0  # the recipe's own override still applies
    text = page.render(page.read_rows([out / "rows.jsonl"]), tmp_path / "page.md", ["rows.jsonl"])
    assert "**Rows missing (11 of 13):**" in text and "| image prompt (SPRC's two passes" in text
