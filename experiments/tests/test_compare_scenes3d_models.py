"""experiments/compare_scenes3d_models.py: the exact paired test against hand-worked values, the
rows from hand-made hits, and a run on two tiny models whose figures are `cir eval scenes3d`'s."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import compare_scenes3d_models as compare  # noqa: E402


@pytest.mark.parametrize("only_baseline, only_candidate, expected", [
    (0, 0, 1.0),
    (0, 5, 2 / 32),  # all five discordant queries on one side: 2 * 0.5**5
    (1, 9, 2 * 11 / 1024),  # 2 * (C(10,0) + C(10,1)) / 2**10
    (9, 1, 2 * 11 / 1024),  # symmetric
    (3, 3, 1.0),  # 2 * 42/64 capped at 1
])
def test_exact_mcnemar_hand_worked(only_baseline, only_candidate, expected):
    assert compare.mcnemar_exact(only_baseline, only_candidate) == pytest.approx(expected)


def test_exact_mcnemar_refuses_negative_counts():
    with pytest.raises(ValueError, match=">= 0"):
        compare.mcnemar_exact(-1, 2)


def test_rows_count_each_group_and_its_discordant_queries():
    groups = [("view angle", "orbit"), ("view angle",), ("colour",), ("colour",)]
    baseline = [True, False, True, False]
    candidate = [True, True, False, False]
    rows = {row.name: row for row in compare.paired_rows(groups, baseline, candidate,
                                                            ["view angle", "orbit", "remove", "colour"])}
    assert list(rows) == [compare.ALL, "view angle", "orbit", "colour"]  # "remove" has no query
    everything = rows[compare.ALL]
    assert (everything.queries, everything.baseline_r1, everything.candidate_r1) == (4, 50.0, 50.0)
    assert (everything.only_baseline, everything.only_candidate, everything.p_value) == (1, 1, 1.0)
    view = rows["view angle"]
    assert (view.baseline_r1, view.candidate_r1, view.difference) == (50.0, 100.0, 50.0)
    assert (view.only_baseline, view.only_candidate) == (0, 1)
    assert (rows["colour"].only_baseline, rows["colour"].only_candidate) == (1, 0)
    with pytest.raises(ValueError, match="same queries"):
        compare.paired_rows(groups, baseline, candidate[:2], [])


def test_two_tiny_models_compared_as_cir_eval_ranks_them(tmp_path, capsys):
    pytest.importorskip("mitsuba")
    import cir_core
    from cir_core.checkpoints import save_model
    from cir_core.cli import main as cir_main
    from cir_core.data.scenes3d import Scenes3DCounts, write_scenes3d_dataset

    data = tmp_path / "test"
    write_scenes3d_dataset(data, seed=4242, counts=Scenes3DCounts(train=0, val=0, test=10), image_size=32,
                           samples_per_pixel=2, progress=False, workers=1)
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folders.append(save_model(cir_core.create_model("tiny-test").eval(), tmp_path / f"model{seed}"))
    out = tmp_path / "compare.json"
    assert compare.main(["--baseline", f"local-dir:{folders[0]}", "--candidate", f"local-dir:{folders[1]}",
                         "--data", str(data), "--batch-size", "8", "--no-prompt", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    record = json.loads(out.read_text())
    for role, folder in (("baseline", folders[0]), ("candidate", folders[1])):
        assert cir_main(["eval", "scenes3d", "--model", f"local-dir:{folder}", "--data", str(data), "--json",
                         "--no-progress", "--device", "cpu", "--batch-size", "8", "--no-prompt"]) == 0
        printed = json.loads(capsys.readouterr().out)
        everything = record["rows"][0]
        assert everything["name"] == compare.ALL and everything["queries"] == printed["num_queries"]
        assert everything[f"{role}_r1"] == pytest.approx(printed["recall"]["R@1"])
        assert record["summaries"][role]["misses"] == printed["misses"]
    assert record["weights"]["baseline"] != record["weights"]["candidate"]
    assert record["code_commit"] and len(record["data_sha256"]) >= 12
    assert f"| {compare.ALL} | {record['rows'][0]['queries']} |" in table
    assert compare.main(["--baseline", f"local-dir:{tmp_path / 'missing'}", "--candidate",
                         f"local-dir:{folders[1]}", "--data", str(data)]) == 2
