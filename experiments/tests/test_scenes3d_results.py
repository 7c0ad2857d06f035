"""The scenes3d results page (experiments/scenes3d_results.py) on synthetic rows: tables, tests
against hand-worked values, the reading, figures, refused rows and the committed page."""
import copy
import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))
import scenes3d_results as page  # noqa: E402
import shapes_results  # noqa: E402

from cir_core.data.scenes3d.misses import OTHER_MISS, WRONG_EDIT, WRONG_VIEWPOINT  # noqa: E402
from test_seed_statistics import t_two_sided_p  # noqa: E402  (closed forms of Student's t)

QUERIES = {"view angle": 20, "view + object": 20}  # and 40 object edits without a camera move
OBJECT_QUERIES = 40
STATIC = "static learned prompt (BLIP4CIR+Bi-like)"
Q4 = 2.7764451051977987  # Student's t, 97.5% point at df 4 (tables)


def fake_report(view, combined, objects, viewpoint_misses=None):
    """A report of 80 queries whose recalls are hits over counts, as `cir eval scenes3d` writes them."""
    hits = {"view angle": view * 20 // 100, "view + object": combined * 20 // 100}
    object_hits = round(objects * OBJECT_QUERIES / 100)
    total = 20 + 20 + OBJECT_QUERIES
    correct = sum(hits.values()) + object_hits
    per_group = {name: {"R@1": 100.0 * hits[name] / count, "R@5": 100.0, "queries": count}
                 for name, count in QUERIES.items()}
    per_group["colour"] = {"R@1": 100.0 * min(object_hits, 10) / 10, "R@5": 100.0, "queries": 10}
    missed = total - correct
    viewpoint = missed // 2 if viewpoint_misses is None else viewpoint_misses
    return {"split": "scenes3d/test", "num_queries": total, "gallery_size": 300,
            "recall": {"R@1": 100.0 * correct / total, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0},
            "per_group": per_group,
            "misses": {WRONG_VIEWPOINT: viewpoint, WRONG_EDIT: missed - viewpoint, OTHER_MISS: 0},
            "query_precision": "fp32", "gallery_precision": "fp32"}


def fake_row(group, seed, view=50, combined=50, objects=50, viewpoint_misses=None, **changes):
    row = {"name": f"scenes3d/{group}/seed{seed}", "benchmark": "scenes3d", "group": group,
           "description": page.SCENES3D.variants[group][0], "table": "main", "steps": 500, "seed": seed,
           "query_mode": group, "recipe": "configs/scenes3d_mini.json", "overrides": {}, "precision": "bf16",
           "threads": 2, "concurrent_rows": 7, "seconds_per_step": 0.1, "train_seconds": 50.0,
           "code_commit": "0123456789abcdef" * 2, "code_dirty": False, "data_sha256": "d" * 16,
           "recipe_sha256": "r" * 16, "device": "NVIDIA H200",
           "report": fake_report(view, combined, objects, viewpoint_misses)}
    row.update(changes)
    return row


def seeds(group, views=(50, 50, 50), combined=(50, 50, 50), objects=(50, 50, 50), **changes):
    return [fake_row(group, s, v, c, o, **changes) for s, (v, c, o) in enumerate(zip(views, combined, objects))]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def render(tmp_path, rows):
    return page.render(rows, tmp_path / "results_scenes3d.md", ["docs/results_rows.jsonl"])


def line_of(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


# ---------------------------------------------------------------------- tables
def test_cells_are_mean_and_sample_sd_over_seeds(tmp_path):
    rows = seeds("sprc", views=(50, 60, 70)) + seeds("static_prompt", views=(30, 40, 50))
    text = render(tmp_path, rows)
    # view angle: mean 60, sd sqrt((100 + 0 + 100) / 2) = 10; all queries: (10..14 + 10 + 20) / 80 = 50, 52.5, 55
    assert "| view angle | 20 | 60.0 ± 10.0 | 40.0 ± 10.0 |" in text
    assert line_of(text, "| SPRC ").startswith("| SPRC (`sprc`) | 0, 1, 2 | 52.5 ± 2.5 | 100.0 ± 0.0 |")
    assert "| object edit | 40 | 50.0 ± 0.0 | 50.0 ± 0.0 |" in text
    assert "| colour | 10 | 100.0 ± 0.0 | 100.0 ± 0.0 |" in text


def test_object_edits_are_the_queries_without_a_camera_move():
    """Derived from a row's counts, and computed directly from ranks by the evaluator: the same."""
    from cir_core.data.triplets import Triplet, TripletSplit
    from cir_core.evaluation.grouped_recall import grouped_recall_from_scores

    groups = [("view angle", "orbit")] * 5 + [("view + object", "zoom", "colour")] * 4 + [("colour",)] * 7
    gallery = [f"img{i}" for i in range(2 * len(groups))]
    triplets = [Triplet(pairid=i, reference=gallery[2 * i], caption="c", target=gallery[2 * i + 1],
                        extras={"groups": g}) for i, g in enumerate(groups)]
    split = TripletSplit("scenes3d/test", triplets, {}, gallery)
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(len(groups), len(gallery), generator=generator)
    for i in range(len(groups)):
        scores[i, 2 * i + 1] += 0.6 * (i % 3 != 0)  # two queries in three find their target near the top
    report = grouped_recall_from_scores(scores, split).to_dict()
    report["num_queries"] = len(groups)
    derived = page.group_recall(report, page.OBJECT_EDIT)
    ranks = grouped_recall_from_scores(scores, split).ranks
    alone = [rank for rank, g in zip(ranks, groups) if g == ("colour",)]
    assert derived["queries"] == 7
    assert derived["R@1"] == pytest.approx(100 * sum(r < 1 for r in alone) / 7)
    assert derived["R@5"] == pytest.approx(100 * sum(r < 5 for r in alone) / 7)


def test_welch_and_paired_tests_are_the_hand_worked_ones(tmp_path):
    rows = (seeds("sprc", views=(50, 60, 70)) + seeds("static_prompt", views=(30, 40, 50))
            + seeds("image_prompt", views=(40, 55, 60)))
    text = render(tmp_path, rows)
    # static: difference 20, standard error sqrt(100/3 + 100/3), df 4; the seeds differ by 20 each: no paired spread
    error = math.sqrt(200 / 3)
    t = 20 / error
    assert (f"| {STATIC} | view angle | +20.0 | {20 - Q4 * error:+.1f} to {20 + Q4 * error:+.1f} | {t:.2f} | 4.0 | "
            f"{t_two_sided_p(t, 4):.3f} | - | - |") in text
    # image prompt: per-seed differences 10, 5, 10: mean 25/3, sd sqrt(25/3), t = 5 at df 2,
    # p = 1 - 5 / sqrt(27), half-width 4.3027 * sqrt(25/9)
    half = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2)) * math.sqrt(25 / 9)
    image_prompt = page.SCENES3D.variants["image_prompt"][0]
    cells = line_of(text, f"| {image_prompt} | view angle |").split("|")
    assert cells[3].strip() == "+8.3" and cells[5].strip() == "1.00" and cells[6].strip() == "4.0"
    assert cells[8].strip() == f"{25 / 3 - half:+.1f} to {25 / 3 + half:+.1f}"
    assert cells[9].strip() == f"{1 - 5 / math.sqrt(27):.3f}"


def test_the_reading_claims_only_what_the_intervals_show(tmp_path):
    rows = (seeds("sprc", views=(70, 75, 80), combined=(30, 35, 40), objects=(45, 50, 55))
            + seeds("static_prompt", views=(30, 35, 40), combined=(70, 75, 80), objects=(47.5, 50, 52.5)))
    text = render(tmp_path, rows)
    error = math.sqrt(25 / 3 + 25 / 3)
    assert (f"- Against the {STATIC}: SPRC ahead by 40.0 points "
            f"(95% CI {40 - Q4 * error:+.1f} to {40 + Q4 * error:+.1f}).") in text
    assert "SPRC is ahead of every alternative on viewpoint edits." in text
    viewpoint, objects, combined = (text.split("### Does SPRC beat each alternative on ")[i] for i in (1, 2, 3))
    assert "no difference shown (+0.0 points, 95% CI" in objects and "which holds 0" in objects
    assert f"SPRC is not shown ahead of: {STATIC}." in objects
    assert "SPRC behind by 40.0 points" in combined and "ahead" not in combined.split("\n\n")[1]
    assert "Not answered: the page lacks the SPRC or the image-prompt rows." in text
    assert "The intervals are not corrected for being 4 at once" in text


def test_reading_the_caption_is_said_to_help_or_hurt_only_where_shown(tmp_path):
    rows = (seeds("sprc", views=(70, 75, 80), combined=(30, 35, 40))
            + seeds("image_prompt", views=(30, 35, 40), combined=(70, 75, 80)))
    question = render(tmp_path, rows).split("### Does reading the caption")[1]
    assert "Reading the caption helps on: view angle." in question
    assert "Reading the caption hurts on: view + object." in question
    assert "No effect of reading it is shown on: all queries, object edit." in question


def test_the_leading_kind_of_miss_is_named_per_mode(tmp_path):
    rows = seeds("sprc", viewpoint_misses=30) + seeds("late_fusion")  # 40 misses each: 30 of them viewpoint
    text = render(tmp_path, rows)
    assert ('- SPRC: most misses are "right scene, wrong viewpoint" (75% of the misses, mean over seeds; first in '
            "3 of 3 seeds).") in text
    assert '- late fusion (parameter-free sum of the trained encoders\' vectors): no kind leads' in text
    assert ("| SPRC | 40.0 ± 0.0 | 30.0 ± 0.0 (75.0 ± 0.0%) | 10.0 ± 0.0 (25.0 ± 0.0%) | "
            "0.0 ± 0.0 (0.0 ± 0.0%) |") in text


def test_missing_rows_are_named_and_untested_comparisons_say_why(tmp_path):
    text = render(tmp_path, [])
    assert "**Rows missing (13 of 13):** scenes3d/sprc/seed0, scenes3d/image_prompt/seed0," in text
    assert "No scenes3d row is in the rows files yet" in text and "## Reading" not in text
    text = render(tmp_path, seeds("sprc") + [fake_row("pseudo_word", 0)])
    missing = line_of(text, "**Rows missing (9 of 13):**")
    assert "scenes3d/pseudo_word/seed0" not in missing and "scenes3d/image_prompt/seed2" in missing
    assert ("- Against the pseudo-word (Pic2Word/SEARLE-like): not tested (fewer than two seeds of one of "
            "them).") in text
    assert "--rows scenes3d/image_prompt/seed0," in text  # the command for what is missing


def test_cpu_and_gpu_rows_are_not_compared(tmp_path):
    rows = seeds("sprc", views=(50, 60, 70)) + seeds("static_prompt", views=(30, 40, 50))
    rows[0]["device"] = "cpu (x86_64, 2 threads)"
    assert f"| {STATIC} | view angle | not tested: trained on both CPU and GPU |" in render(tmp_path, rows)


def test_rows_of_another_budget_are_kept_out_of_the_tables(tmp_path):
    rows = seeds("sprc") + seeds("static_prompt") + [fake_row("late_fusion", 0, view=100, steps=300)]
    text = render(tmp_path, rows)
    tables, other = text.split("## Rows at another budget")
    assert "late fusion" not in tables.split("**Rows missing")[0] and "| late fusion" not in tables
    assert "| scenes3d/late_fusion/seed0 | 300 |" in other


def test_the_start_of_the_recipe_is_read_from_the_rows_own_recipe(tmp_path):
    recipe = ROOT / "configs" / "scenes3d_mini.json"
    sha = hashlib.sha256(recipe.read_bytes()).hexdigest()[:16]
    start = json.loads(recipe.read_text())["model"]["checkpoint"]
    text = render(tmp_path, seeds("sprc", recipe_sha256=sha))
    assert f"Every row starts from `{start}`, the recipe's `model.checkpoint`" in text
    assert "Every row starts from" not in render(tmp_path, seeds("sprc"))  # another recipe's contents


def test_one_figure_per_question_is_drawn_and_linked(tmp_path):
    rows = (seeds("sprc", views=(50, 60, 70)) + seeds("image_prompt", views=(40, 55, 60))
            + seeds("static_prompt", views=(30, 40, 50)))
    text = render(tmp_path, rows)
    names = ["results_scenes3d_view_angle.png", "results_scenes3d_object_edit.png",
             "results_scenes3d_view_and_object.png", page.CAPTION_FIGURE, page.MISSES_FIGURE]
    for name in names:
        assert (tmp_path / "figures" / name).stat().st_size > 1000 and f"(figures/{name})" in text
    text = render(tmp_path, seeds("sprc") + seeds("static_prompt"))  # no image prompt: its figure is stale
    assert page.CAPTION_FIGURE not in text and (tmp_path / "figures" / page.CAPTION_FIGURE).is_file()


# ---------------------------------------------------------------------- refused rows
@pytest.mark.parametrize("change, message", [
    (lambda row: row.pop("code_commit"), "lacks provenance (code_commit)"),
    (lambda row: row.update(code_commit=None, data_sha256=None), "lacks provenance (code_commit, data_sha256)"),
    (lambda row: row.pop("train_seconds"), "lacks provenance (train_seconds)"),
    (lambda row: row.pop("device"), "lacks provenance (device)"),
    (lambda row: row.update(code_dirty="yes"), "code_dirty is 'yes'"),
    (lambda row: row["report"]["misses"].update({OTHER_MISS: 3}), "misses add up to 43"),
    (lambda row: row["report"]["per_group"]["colour"].update({"R@1": 33.0}), "R@1 is not a share of its 10"),
    (lambda row: row["report"]["per_group"]["colour"].update({"queries": 99}), "colour.queries is 99"),
    (lambda row: row.update(seed=1), "its name is not the sweep's for group sprc and seed 1"),
    (lambda row: row.update(group="sprc_v2"), "group 'sprc_v2' is not one of the sweep's"),
    (lambda row: row["report"].pop("misses"), "lacks report.misses"),
    (lambda row: row["report"]["recall"].update({"R@1": float("nan")}), "R@1 is nan, not a percentage"),
    (lambda row: row.update(recipe_sha256="a`b"), "recipe_sha256 is 'a`b', not text without backticks"),
])
def test_a_row_lacking_provenance_or_consistency_is_refused_in_one_line(tmp_path, capsys, change, message):
    row = fake_row("sprc", 0)
    change(row)
    rows = write_rows(tmp_path / "rows.jsonl", [fake_row("static_prompt", 0), row])
    with pytest.raises(shapes_results.RowsError, match=r"rows.jsonl:2: row 'scenes3d/sprc/seed0'") as refused:
        page.read_rows([rows])
    assert message in str(refused.value)
    code = page.main(["--rows", str(rows), "--out", str(tmp_path / "page.md")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "page.md").exists()


def test_bad_arguments_and_files_are_one_line_errors(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", seeds("sprc"))
    for argv, message in ((["--rows", str(tmp_path / "none.jsonl")], "none.jsonl does not exist"),
                          (["--rows", str(rows), "--out", str(tmp_path / "no" / "page.md")], "does not exist"),
                          (["--rows", str(rows), "--out", str(tmp_path)], "is a folder")):
        assert page.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (argv, err)
    (tmp_path / "twice.jsonl").write_text(rows.read_text() + json.dumps(fake_row("sprc", 0)) + "\n")
    assert page.main(["--rows", str(tmp_path / "twice.jsonl"), "--out", str(tmp_path / "page.md")]) == 2
    assert "appears twice" in capsys.readouterr().err
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    assert page.main(["--rows", str(tmp_path / "list.jsonl"), "--out", str(tmp_path / "page.md")]) == 2
    assert "a JSON object, not list" in capsys.readouterr().err


def test_shapes_and_scenes3d_rows_share_a_file_and_each_page_reads_its_own(tmp_path):
    shapes_lines = (ROOT / "docs" / "results_rows.jsonl").read_text().splitlines()
    shapes_rows = [json.loads(line) for line in shapes_lines if line.strip() and "scenes3d" not in line]
    mixed = write_rows(tmp_path / "rows.jsonl", shapes_rows[:2] + [fake_row("sprc", 0)] + shapes_rows[2:3])
    assert [r["name"] for r in page.read_rows([mixed])] == ["scenes3d/sprc/seed0"]
    assert [r["name"] for r in shapes_results.read_rows([mixed])] == [r["name"] for r in shapes_rows[:3]]


def test_text_from_rows_is_escaped(tmp_path):
    rows = seeds("sprc") + seeds("static_prompt")
    for row in rows:
        row["report"]["per_group"]["<b>x</b> | y"] = {"R@1": 50.0, "R@5": 100.0, "queries": 10}
    text = render(tmp_path, rows)
    assert "<b>" not in text and "| &lt;b&gt;x&lt;/b&gt; \\| y | 10 |" in text


def test_committed_page_is_a_render_of_the_committed_rows(tmp_path):
    rows = page.read_rows([ROOT / "docs" / "results_rows.jsonl"])
    committed = (ROOT / "docs" / "results_scenes3d.md").read_text()
    assert render(tmp_path, copy.deepcopy(rows)) == committed
