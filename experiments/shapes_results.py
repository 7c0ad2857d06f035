"""Regenerate the shapes results: docs/results.json, docs/results.md, docs/figures/results_*.png.

    python experiments/shapes_results.py --rows docs/results_rows.jsonl --data data/shapes

takes the trained rows written by `experiments/shapes_sweep.py` (every row one recipe at one
budget; docs/results_rows.jsonl keeps the rows of the published table, with the commit of
their recipe, and docs/results_training_logs.jsonl their training logs), evaluates the
embedded default model and its inference-time baselines on the shapes test split here,
writes all of them to docs/results.json, then renders docs/results.md and the figures from
docs/results.json. Without `--rows` it only renders again from docs/results.json. Rows at
another budget or recipe than the main table's are shown in their own labelled table, never
in the main one. The text after READING_MARKER in
docs/results.md is written by hand and kept across regenerations.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import json
import math
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))  # run as a script from anywhere

from seed_statistics import welch_test  # noqa: E402
from sweep_benchmarks import SHAPES  # noqa: E402  (the sweep's own table of rows)

READING_MARKER = "## Reading the table"  # hand-written commentary starts here in the output
# Query modes evaluated on the embedded default's weights without training.
INFERENCE_BASELINES = {
    "image_only": "image only (reference's own vectors)",
    "text_only": "text only (caption with the auxiliary prompt)",
    "late_fusion": "late fusion (sum of the two above)",
}
# Every row of docs/results.json records these; trained rows also record TRAINED_FIELDS. Trained rows
# may also record recipe_sha256 (the recipe file's contents), recipe_commit and description_weight.
ROW_FIELDS = ("name", "group", "description", "table", "steps", "seed", "query_mode", "prompt_length",
              "align_weight", "train_seconds", "seconds_per_step", "device", "precision", "report")
TRAINED_FIELDS = ("recipe", "overrides", "train_flops_per_step", "concurrent_rows", "threads")
# What the sweep records of where a row came from; rows written before it did lack some, and the
# provenance table says "not recorded" for them rather than filling anything in (code_dirty is shown
# beside code_commit).
PROVENANCE_COLUMNS = ("code_commit", "data_sha256", "recipe_sha256", "device", "threads", "train_seconds")
REPORT_FIELDS = ("recall", "novel", "per_edit", "per_object_count", "num_queries", "gallery_size")
RECALLS = ("R@1", "R@5", "R@10", "R@50")
# Descriptions earlier sweeps wrote, shown under the sweep's label of today.
RELABELLED = {"late fusion, trained": SHAPES.variants["late_fusion"][0]}
# Pairs of seeded groups whose seed values are compared by Welch's t-test, and the metrics compared.
TESTED_PAIRS = (("sprc", "static_prompt"),)
TESTED_METRICS = ("recall/R@1", "novel/R@1", "recall/R@5")
ROW_NAME = re.compile(r"[\w.+-]+(/[\w.+-]+)*")  # as the sweep names rows: group/seedN, default/mode
TABLES = ("main", "default", "inference")


class RowsError(ValueError):
    """Rows that cannot be rendered; the message names the file and the row."""


# ---------------------------------------------------------------------- rows
def read_rows(paths: list[Path]) -> list[dict]:
    """The shapes rows of the sweep's rows.jsonl files, in file order (rows of another `benchmark` are
    passed over; rows written before the field existed are shapes rows); a name twice or a missing or
    malformed field is refused (RowsError)."""
    rows, seen = [], set()
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = parse_json(line, f"{path}:{number}")
            if isinstance(row, dict) and row.get("benchmark", SHAPES.name) != SHAPES.name:
                continue
            check_row(row, f"{path}:{number}", trained=True)
            if row["name"] in seen:
                raise RowsError(f"{path}:{number}: row {row['name']!r} appears twice; keep one")
            seen.add(row["name"])
            rows.append(row)
    return rows


def parse_json(text: str, where: str):
    """JSON as written by the sweep (NaN parses, and `check_row` refuses it where it matters)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise RowsError(f"{where}: nested too deeply to be a row") from None
    except ValueError as error:
        raise RowsError(f"{where}: not JSON ({error})") from None


def check_row(row, where: str, trained: bool) -> None:
    """Refuse (RowsError, naming `where` and the row) a row lacking a field, or with a field of the
    wrong type, a recall that is not a finite percentage, or a name the sweep would not give."""
    if not isinstance(row, dict):
        raise RowsError(f"{where}: a row is a JSON object, not {type(row).__name__}")
    name = row.get("name")
    label = f"{where}: row {name!r:.80}"
    missing = [f for f in ROW_FIELDS + (TRAINED_FIELDS if trained else ()) if f not in row]
    report = row.get("report")
    missing += [f"report.{f}" for f in REPORT_FIELDS if not isinstance(report, dict) or f not in report]
    if missing:
        raise RowsError(f"{label} lacks {', '.join(missing)}")
    problems = []
    if not isinstance(name, str) or not ROW_NAME.fullmatch(name):
        problems.append("its name is not letters, digits and . _ + - / as the sweep writes it")
    if row["table"] not in TABLES:
        problems.append(f"table {row['table']!r:.40} is not one of {', '.join(TABLES)}")
    main = row["table"] == "main"
    for field, kinds in (("group", (str,)), ("description", (str,)), ("query_mode", (str,)),
                         ("prompt_length", (int,)), ("align_weight", (int, float)),
                         ("steps", (int,) if main else (int, type(None))),
                         ("seed", (int,) if main else (int, type(None))),
                         ("train_seconds", (int, float) if main else (int, float, type(None))),
                         ("seconds_per_step", (int, float) if main else (int, float, type(None))),
                         ("device", (str,) if main else (str, type(None))),
                         ("precision", (str,) if main else (str, type(None))),
                         ("description_weight", (int, float, type(None))),
                         ("recipe_sha256", (str,)), ("recipe_commit", (str,)),
                         ("code_commit", (str, type(None))), ("data_sha256", (str,))):
        if field in row and not _is(row[field], kinds):
            problems.append(f"{field} is {row[field]!r:.40}")
    if trained:
        for field, kinds in (("recipe", (str,)), ("overrides", (dict,)),
                             ("train_flops_per_step", (int, float, type(None))),
                             ("concurrent_rows", (int,)), ("threads", (int,))):
            if not _is(row[field], kinds):
                problems.append(f"{field} is {row[field]!r:.40}")
    if row.get("code_dirty") not in (True, False, None):
        problems.append(f"code_dirty is {row['code_dirty']!r:.40}")
    for field in ("recipe", "recipe_sha256", "recipe_commit", "code_commit", "data_sha256"):  # shown in code spans
        if isinstance(row.get(field), str) and ("`" in row[field] or "\n" in row[field]):
            problems.append(f"{field} holds a backtick or a line break")
    for field in ("num_queries", "gallery_size"):
        if not _is(report[field], (int,)) or report[field] < 0:
            problems.append(f"report.{field} is {report[field]!r:.40}")
    problems += _recall_problems(report["recall"], "report.recall", RECALLS)
    problems += _recall_problems(report["novel"], "report.novel", ("R@1",))
    for field in ("per_edit", "per_object_count"):
        if not isinstance(report[field], dict):
            problems.append(f"report.{field} is not an object")
            continue
        for key, recall in report[field].items():
            if "/" in key:  # metric paths are split at slashes
                problems.append(f"report.{field} has a key with a slash: {key!r:.40}")
            problems += _recall_problems(recall, f"report.{field}.{key}", ("R@1",))
    if isinstance(report["per_object_count"], dict) and not all(
            key.isdigit() for key in report["per_object_count"]):
        problems.append("report.per_object_count has a key that is not a count of objects")
    if problems:
        raise RowsError(f"{label}: {'; '.join(problems)}")


def _is(value, kinds: tuple[type, ...]) -> bool:
    return not isinstance(value, bool) and isinstance(value, kinds) and (
        not isinstance(value, float) or math.isfinite(value))


def _recall_problems(recall, where: str, keys: tuple[str, ...]) -> list[str]:
    if not isinstance(recall, dict):
        return [f"{where} is not an object"]
    problems = []
    for key in keys:
        value = recall.get(key)
        if not _is(value, (int, float)) or not 0 <= value <= 100:
            problems.append(f"{where}.{key} is {value!r:.40}, not a percentage")
    return problems


def budget_of(row: dict) -> tuple[int, str, str]:
    """Steps, recipe file and its contents: rows differing in any of them are not one table."""
    return row["steps"], row["recipe"], row.get("recipe_sha256") or ""


def main_budget(rows: list[dict]) -> tuple[int, str, str] | None:
    """The budget of the main table: the one most trained rows share (ties: more steps)."""
    budgets = Counter(budget_of(row) for row in rows if row["table"] == "main")
    if not budgets:
        return None
    return max(budgets, key=lambda budget: (budgets[budget], budget[0]))


def split_by_budget(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The main rows, and the trained rows at another budget or recipe (shown apart, labelled)."""
    budget = main_budget(rows)
    main = [r for r in rows if r["table"] == "main" and budget_of(r) == budget]
    other = [r for r in rows if r["table"] == "main" and budget_of(r) != budget]
    return main, other


def recipe_text(row: dict) -> str:
    """The recipe as the tables name it: the file, and the commit or contents it had."""
    if row.get("recipe_commit"):
        return f"`{row['recipe']}` as of commit {md_text(row['recipe_commit'])}"
    if row.get("recipe_sha256"):
        return f"`{row['recipe']}` (contents sha256 {md_text(row['recipe_sha256'])})"
    return f"`{row['recipe']}`"


def is_current_recipe(row: dict) -> bool:
    """Whether the row's recipe file has the same contents in this checkout."""
    import hashlib

    path = ROOT / row["recipe"]
    return bool(row.get("recipe_sha256")) and path.is_file() and (
        hashlib.sha256(path.read_bytes()).hexdigest()[:16] == row["recipe_sha256"])


def checkpoint_digest(folder: Path) -> str:
    """A hash of the checkpoint's files (config and weights): the same files give the same rows."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def evaluate_default_rows(folder: Path, data: Path, threads: int, previous: list[dict]) -> list[dict]:
    """The embedded default and the inference-time baselines on its weights (test split, CPU).

    Rows in `previous` of the same checkpoint files and test split are reused, not evaluated again.
    """
    from cir_core.data.shapes import read_shapes_split

    names = ["default"] + [f"default/{mode}" for mode in INFERENCE_BASELINES]
    digest = checkpoint_digest(folder)
    split = read_shapes_split(data, "test")
    known = {r["name"]: r for r in previous if r.get("weights") == digest
             and r["report"]["num_queries"] == len(split.triplets)}
    if all(name in known for name in names):
        return [known[name] for name in names]

    import torch

    import cir_core
    from cir_core.data.shapes import read_shapes_scenes
    from cir_core.evaluation.shapes import evaluate_shapes

    torch.set_num_threads(threads)
    model = cir_core.load_model(f"local-dir:{folder}")
    scenes = read_shapes_scenes(data)
    card = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
    recipe = json.loads((folder / "train_config.json").read_text()) if (folder / "train_config.json").is_file() else {}
    steps = card.get("max_steps") or recipe.get("max_steps")
    wall = card.get("train_wall_seconds")
    # device and precision of the default's training (its card, else its recipe); evaluated here on the CPU
    base = {"group": "default", "seed": recipe.get("seed"), "prompt_length": model.config.qformer.num_query_tokens,
            "align_weight": model.config.loss.align_weight,
            "description_weight": model.config.loss.description_weight,
            "device": card.get("device") or recipe.get("device"),
            "precision": card.get("precision") or recipe.get("precision"), "evaluated_on": "cpu",
            "weights": digest}
    entries = [("default", "SPRC, embedded default (its own budget)", "default", model.config.query_mode, steps,
                wall, model)]
    for mode, description in INFERENCE_BASELINES.items():
        entries.append((f"default/{mode}", f"{description}, default weights", "inference", mode, 0, None,
                        with_mode(model, mode)))
    rows = []
    for name, description, table, mode, row_steps, seconds, variant in entries:
        if name in known:
            rows.append(known[name])
            continue
        print(f"evaluating {name} on the test split", file=sys.stderr)
        report = evaluate_shapes(variant, split, progress=False, scenes=scenes).to_dict()
        rows.append({**base, "name": name, "description": description, "table": table, "query_mode": mode,
                     "steps": row_steps, "train_seconds": seconds,
                     # the card's wall time includes its validations every eval_every steps
                     "seconds_per_step": round(seconds / row_steps, 3) if seconds and row_steps else None,
                     "report": report})
    return rows


def with_mode(model, mode: str):
    import copy

    variant = copy.copy(model)
    variant.config = dataclasses.replace(model.config, query_mode=mode)
    return variant


# ---------------------------------------------------------------------- numbers
@dataclasses.dataclass
class Spread:
    """A metric over the seeds of one group: mean, sample standard deviation, min and max."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        if len(self.values) == 1:
            return f"{self.values[0]:.1f}"
        return f"{self.mean:.1f} ± {self.std:.1f}"

    def range_text(self) -> str:
        return f"{min(self.values):.1f}–{max(self.values):.1f}"


def metric(row: dict, path: str) -> float:
    value = row["report"]
    for key in path.split("/"):
        value = value[key]
    return float(value)


def groups_of(rows: list[dict]) -> dict[str, list[dict]]:
    """Main rows by group, in the sweep's order of groups, seeds in order."""
    order = {group: i for i, group in enumerate(SHAPES.variants)}
    grouped: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (order.get(r["group"], len(order)), r["seed"])):
        grouped.setdefault(row["group"], []).append(row)
    return grouped


def spread(rows: list[dict], path: str) -> Spread:
    return Spread([metric(row, path) for row in rows])


def seed_zero(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["seed"])


def curve(grouped: dict[str, list[dict]], field_name: str) -> list[dict]:
    """Seed-0 rows that are SPRC except for `field_name`, sorted by it (SPRC itself included)."""
    prefix = {"prompt_length": "prompt_", "align_weight": "align_"}[field_name]
    members = [seed_zero(rows) for group, rows in grouped.items() if group == "sprc" or group.startswith(prefix)]
    return sorted(members, key=lambda r: r[field_name])


# ---------------------------------------------------------------------- markdown
def label(row: dict) -> str:
    return RELABELLED.get(row["description"], row["description"])


def md_text(value) -> str:
    """Text from a row as markdown: no HTML, no table cell break, no code span, one line."""
    escaped = html.escape(str(value), quote=False)
    return " ".join(escaped.replace("|", "\\|").replace("`", "\\`").split())


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def gflops(rows: list[dict]) -> str:
    """Mean GFLOPs per step (one counted step per row: the text lengths of its batch vary)."""
    flops = [row.get("train_flops_per_step") for row in rows]
    return "-" if None in flops else f"{statistics.fmean(flops) / 1e9:.3g}"


def recall_cells(rows: list[dict]) -> list[str]:
    return [spread(rows, f"recall/{k}").text() for k in RECALLS] + [spread(rows, "novel/R@1").text()]


def device_kind(row: dict) -> str:
    """The sweep's --device for a row (its `device` is a GPU's name or "cpu (arch, N threads)")."""
    return "cpu" if row["device"].startswith("cpu") else "cuda"


def device_phrase(device: str) -> str:
    if device.startswith("cpu"):  # "cpu (x86_64, 1 threads)"
        arch, _, threads = device.removeprefix("cpu (").removesuffix(")").partition(", ")
        count = threads.split()[0] if threads else "?"
        return f"the CPU ({md_text(arch)}) with {md_text(count)} torch thread{'s' if count != '1' else ''} per row"
    return f"one {md_text(device)}"


def at_once(rows: list[dict]) -> str:
    return "/".join(str(n) for n in sorted({r["concurrent_rows"] for r in rows}))


def write_markdown(rows: list[dict], data: str, figures: Path, rows_files: list[str]) -> str:
    main, other = split_by_budget(rows)
    default = [r for r in rows if r["table"] in ("default", "inference")]
    anchor = (main or default or other)[0]["report"]
    lines = [
        "# Shapes benchmark results",
        "",
        f"Test split of the shapes benchmark (`cir data shapes --seed 0`): {anchor['num_queries']} queries, "
        f"gallery of {anchor['gallery_size']} scenes, reference excluded from its own ranking. Recall in percent.",
        "",
    ]
    if main:
        lines += main_section(main, data, figures, rows_files)
    if other:
        lines += ["## Rows at another budget or recipe (not comparable with the main table)", "",
                  "| model | steps | recipe | seed | R@1 | R@5 | R@10 | R@50 | novel R@1 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in other:
            lines.append(f"| {md_text(label(row))} | {row['steps']} | {recipe_text(row)} | {row['seed']} | "
                         + " | ".join(recall_cells([row])) + " |")
        lines.append("")
    if default:
        lines += default_section(default, main)
    return "\n".join(lines)


def main_section(main: list[dict], data: str, figures: Path, rows_files: list[str]) -> list[str]:
    grouped = groups_of(main)
    steps = main[0]["steps"]
    devices = sorted({r["device"] for r in main})
    precisions = sorted({r["precision"] for r in main})
    batches: dict[tuple[str, int, int], list[str]] = {}  # (device kind, rows at once, threads) -> rows
    for row in sorted(main, key=lambda r: r["name"]):
        batches.setdefault((device_kind(row), row["concurrent_rows"], row["threads"]), []).append(row["name"])
    weights = {r.get("description_weight") for r in main}
    extra = f"; `loss.description_weight` {weights.pop():g}" if len(weights) == 1 and None not in weights else ""
    commit = main[0].get("recipe_commit")
    sweeps = "; ".join(f"`python experiments/shapes_sweep.py --data {data} --device {kind} --steps {steps} "
                       f"--parallel {n}{f' --threads {threads}' if kind == 'cpu' else ''} --rows {','.join(names)} "
                       "--out OUT`" for (kind, n, threads), names in sorted(batches.items()))
    since = "the recipe file is unchanged since" if is_current_recipe(main[0]) else "the recipe as it was then"
    machine = "a GPU machine" if any(kind == "cuda" for kind, _, _ in batches) else "a CPU machine"
    source = " ".join(f"--rows {path}" for path in rows_files) or "--rows OUT/rows.jsonl"
    lines = [
        f"## Trained at one budget: {steps} steps of one recipe",
        "",
        f"Every row below is {recipe_text(main[0])} (look-alikes included{extra}) trained for {steps} steps, "
        "one OneCycle schedule each, differing only in what the row names; its saved model is evaluated on the "
        "test split. SPRC and the static prompt were trained with seeds "
        f"{', '.join(str(r['seed']) for r in grouped.get('sprc', []))}: their cells are mean ± sample standard "
        "deviation over the seeds, with the R@1 range beside them; every other row is one seed (0).",
        "",
        f"Each row trained on {' or '.join(device_phrase(d) for d in devices)} in "
        f"{', '.join(md_text(p) for p in precisions)}, "
        f"several rows at a time sharing the {'device' if machine == 'a GPU machine' else 'machine'} ("
        + "; ".join(f"{n} at a time: {', '.join(names)}" for (_, n, _), names in sorted(batches.items()))
        + "). Seconds per step depend on how many rows shared the device (column \"at once\"), so they compare "
        "only rows with the same number there. FLOPs per step count the matrix products of one training step, "
        "forward and backward (torch's FlopCounterMode), and do not depend on the sharing.",
        "",
        f"Regenerate: on {machine}"
        + (f", at commit {commit} ({since})" if commit else "")
        + f", `python -m cir_core data shapes --out {data} --seed 0`, then {sweeps} (rows append to "
        f"OUT/rows.jsonl); then here `python experiments/shapes_results.py {source} --data {data}`.",
        "",
        "| model | seeds | R@1 | R@1 range | R@5 | R@10 | R@50 | novel R@1 | train s | s/step | at once "
        "| GFLOPs/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, rows in grouped.items():
        cells = recall_cells(rows)
        r1_range = spread(rows, "recall/R@1").range_text() if len(rows) > 1 else "-"
        seconds = Spread([r["train_seconds"] for r in rows])
        per_step = Spread([r["seconds_per_step"] for r in rows])
        lines.append(f"| {md_text(label(rows[0]))} | {len(rows)} | {cells[0]} | {r1_range} | "
                     + " | ".join(cells[1:]) + f" | {seconds.mean:.0f} | {per_step.mean:.3f} | {at_once(rows)} | "
                     f"{gflops(rows)} |")
    if all(g in grouped for g in SHAPES.seeded_groups):
        lines += ["", "Per seed (R@1):", "", "| model | " + " | ".join(
            f"seed {r['seed']}" for r in grouped[SHAPES.seeded_groups[0]]) + " |",
            "|---|" + "---|" * len(grouped[SHAPES.seeded_groups[0]])]
        for group in SHAPES.seeded_groups:
            lines.append(f"| {md_text(label(grouped[group][0]))} | "
                         + " | ".join(f"{metric(r, 'recall/R@1'):.1f}" for r in grouped[group]) + " |")
    edits = sorted(main[0]["report"]["per_edit"])
    counts = sorted(main[0]["report"]["per_object_count"], key=int)
    lines += ["", "R@1 per edit type and by objects in the target (seeded rows: mean over seeds):", "",
              "| model | " + " | ".join(md_text(e) for e in edits) + " | "
              + " | ".join(f"{c} obj" for c in counts) + " |",
              "|---|" + "---|" * (len(edits) + len(counts))]
    for group, rows in grouped.items():
        lines.append(f"| {md_text(label(rows[0]))} | "
                     + " | ".join(f"{spread(rows, f'per_edit/{e}/R@1').mean:.1f}" for e in edits) + " | "
                     + " | ".join(f"{spread(rows, f'per_object_count/{c}/R@1').mean:.1f}" for c in counts) + " |")
    for title, field_name, unit in (("Prompt length", "prompt_length", "Q"),
                                    ("Alignment weight", "align_weight", "weight")):
        points = curve(grouped, field_name)
        if len(points) < 2:
            continue
        lines += ["", f"{title} (seed 0 each; SPRC is Q=8, weight 0.4):", "",
                  f"| {unit} | R@1 | R@5 | novel R@1 | s/step | GFLOPs/step | at once |",
                  "|---|---|---|---|---|---|---|"]
        for row in points:
            lines.append(f"| {row[field_name]:g} | {metric(row, 'recall/R@1'):.1f} | {metric(row, 'recall/R@5'):.1f} | "
                         f"{metric(row, 'novel/R@1'):.1f} | {row['seconds_per_step']:.3f} | {gflops([row])} | "
                         f"{row['concurrent_rows']} |")
    lines += tests_section(grouped) + provenance_section(main)
    lines += ["", f"![R@1 of the main rows]({figures.name}/results_r1.png)", "",
              f"![R@1 and compute per step against prompt length]({figures.name}/results_prompt_length.png)", "",
              f"![R@1 against alignment weight]({figures.name}/results_align_weight.png)", "",
              f"![R@1 per edit type]({figures.name}/results_per_edit.png)", ""]
    return lines


def tests_section(grouped: dict[str, list[dict]]) -> list[str]:
    """Welch's t-tests between the seeds of TESTED_PAIRS, computed here from the rows."""
    lines = ["", "Welch's t-test on the seed values (two-sided, unequal variances; computed from the rows by "
             "`experiments/shapes_results.py`):", "",
             "| first | second | metric | difference of means | t | df | p |", "|---|---|---|---|---|---|---|"]
    for first, second in TESTED_PAIRS:
        if first not in grouped or second not in grouped:
            continue
        a, b = grouped[first], grouped[second]
        kinds = {device_kind(r) for r in a + b}
        for path in TESTED_METRICS:
            test = welch_test([metric(r, path) for r in a], [metric(r, path) for r in b])
            cells = ("not tested: trained on both CPU and GPU" if len(kinds) > 1 else
                     "not tested: fewer than two seeds, or no spread" if test is None else
                     f"{spread(a, path).mean - spread(b, path).mean:+.2f} | {test.t:.2f} | {test.df:.2f} | "
                     f"{test.p:.2f}")
            lines.append(f"| {md_text(label(a[0]))} | {md_text(label(b[0]))} | {path.replace('recall/', '').replace('/', ' ')} | "
                         f"{cells} |")
    return lines if len(lines) > 5 else []


def provenance_cell(row: dict, field_name: str) -> str:
    if row.get(field_name) is None:
        return "not recorded"
    value = row[field_name]
    if field_name == "code_commit":
        dirty = {True: " + uncommitted changes", False: ""}.get(row.get("code_dirty"), " (changes not recorded)")
        return f"`{value[:12]}`{dirty}"
    if field_name in ("data_sha256", "recipe_sha256"):
        return f"`{value}`"
    return md_text(f"{value:.0f}" if field_name == "train_seconds" else value)


def provenance_section(main: list[dict]) -> list[str]:
    """Per row, what the sweep recorded of its code, data, recipe, device and time."""
    lines = ["", "Where each row came from, as the sweep recorded it (rows written before it recorded a field "
             "say \"not recorded\"):", "",
             "| row | code commit | data sha256 | recipe sha256 | device | threads | train s |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(main, key=lambda r: r["name"]):
        lines.append(f"| {md_text(row['name'])} | " + " | ".join(
            provenance_cell(row, f) for f in PROVENANCE_COLUMNS) + " |")
    return lines


def default_section(rows: list[dict], main: list[dict]) -> list[str]:
    default = next((r for r in rows if r["table"] == "default"), None)
    steps = default["steps"] if default else "-"
    recipe = "Not part of the table above: the default (`checkpoints/shapes-mini`) has its own recipe and budget"
    if default:
        recipe += f" ({steps} steps, seed {default['seed']}"
        if default.get("description_weight") is not None:
            recipe += f", `loss.description_weight` {default['description_weight']:g}"
            main_weights = {r.get("description_weight") for r in main}
            if main and len(main_weights) == 1 and None not in main_weights:
                table_weight = main_weights.pop()
                recipe += (", as for the table's rows" if table_weight == default["description_weight"]
                           else f" against {table_weight:g} for the table's rows")
        recipe += (f"; trained on {md_text(default['device'])} in {md_text(default['precision'])}, "
                   "as its `training.json` and "
                   "`train_config.json` say; train s is its wall time, validations included)")
    lines = [f"## The embedded default ({steps} steps) and inference-time baselines on its weights", "",
             recipe + ". The baselines change only how its query is formed, without training. All four are "
             "evaluated on the CPU by `python experiments/shapes_results.py --rows ...` from the checkpoint's files.",
             "",
             "| model | steps | R@1 | R@5 | R@10 | R@50 | novel R@1 | train s |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {md_text(label(row))} | {row['steps'] if row['steps'] is not None else '-'} | "
                     + " | ".join(recall_cells([row])) + f" | {fmt(row['train_seconds'], 0)} |")
    return lines + [""]


# ---------------------------------------------------------------------- figures
def seeds_beside(ax, seeded: list[dict], field_name: str) -> None:
    """SPRC's other seeds as grey dots on a seed-0 curve: the noise a single-seed point carries."""
    others = [r for r in seeded if r is not seed_zero(seeded)]
    if others:
        ax.plot([r[field_name] for r in others], [metric(r, "recall/R@1") for r in others], ".", color="grey",
                label="SPRC, other seeds", zorder=3)
        ax.legend(fontsize=7, loc="lower right")


def plot(rows: list[dict], figures: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main, _ = split_by_budget(rows)
    if not main:
        return
    figures.mkdir(parents=True, exist_ok=True)
    grouped = groups_of(main)
    steps = main[0]["steps"]

    names = [label(rows_[0]) for rows_ in grouped.values()]
    r1 = [spread(rows_, "recall/R@1") for rows_ in grouped.values()]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    ax.barh(names[::-1], [s.mean for s in r1][::-1], xerr=[s.std for s in r1][::-1], color="#4c72b0", capsize=3)
    for rows_, y in zip(list(grouped.values())[::-1], range(len(names))):
        ax.plot([metric(r, "recall/R@1") for r in rows_], [y] * len(rows_), "k.", markersize=4)
    ax.set_xlabel(f"test R@1 (%) after {steps} steps (dots: seeds)")
    ax.set_xlim(0, 100)
    fig.tight_layout()
    fig.savefig(figures / "results_r1.png", dpi=120)
    plt.close(fig)

    points = curve(grouped, "prompt_length")
    if len(points) >= 2:
        lengths = [r["prompt_length"] for r in points]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
        left.plot(lengths, [metric(r, "recall/R@1") for r in points], "o-", color="#4c72b0")
        seeds_beside(left, grouped.get("sprc", []), "prompt_length")
        left.set_xscale("log", base=2)
        left.set_xticks(lengths, [str(q) for q in lengths])
        left.set_ylim(0, 100)  # R@1 near the top must not clip the other seeds
        left.set_xlabel("prompt length Q")
        left.set_ylabel(f"test R@1 (%) after {steps} steps, seed 0")
        right.plot(lengths, [r["seconds_per_step"] for r in points], "o-", color="#dd8452", label="s/step")
        for row in points:  # seconds per step depend on how many rows shared the device
            right.annotate(f"{row['concurrent_rows']} at once", (row["prompt_length"], row["seconds_per_step"]),
                           textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7, color="#dd8452")
        right.set_xscale("log", base=2)
        right.set_xticks(lengths, [str(q) for q in lengths])
        right.set_xlabel("prompt length Q")
        right.set_ylabel("seconds per training step", color="#dd8452")
        if all(r.get("train_flops_per_step") for r in points):
            twin = right.twinx()
            twin.plot(lengths, [r["train_flops_per_step"] / 1e9 for r in points], "s--", color="#55a868")
            twin.set_ylabel("GFLOPs per training step", color="#55a868")
            twin.set_ylim(bottom=0)
        right.set_ylim(0, 1.2 * max(r["seconds_per_step"] for r in points))  # room for the labels
        fig.tight_layout()
        fig.savefig(figures / "results_prompt_length.png", dpi=120)
        plt.close(fig)

    points = curve(grouped, "align_weight")
    if len(points) >= 2:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot([r["align_weight"] for r in points], [metric(r, "recall/R@1") for r in points], "o-", color="#4c72b0")
        seeds_beside(ax, grouped.get("sprc", []), "align_weight")
        ax.set_ylim(0, 100)
        ax.set_xlabel("alignment loss weight")
        ax.set_ylabel(f"test R@1 (%) after {steps} steps, seed 0")
        fig.tight_layout()
        fig.savefig(figures / "results_align_weight.png", dpi=120)
        plt.close(fig)

    edits = sorted(main[0]["report"]["per_edit"])
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / len(grouped)
    for i, rows_ in enumerate(grouped.values()):
        ax.bar([e + i * width for e in range(len(edits))],
               [spread(rows_, f"per_edit/{e}/R@1").mean for e in edits], width, label=label(rows_[0]))
    ax.set_xticks([e + 0.4 - width / 2 for e in range(len(edits))], edits)
    ax.set_ylabel(f"test R@1 (%) after {steps} steps")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08))  # below: the bars fill the axes
    fig.tight_layout()
    fig.savefig(figures / "results_per_edit.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------- main
def render(results_json: Path, out: Path, data: str) -> str:
    results = parse_json(results_json.read_text(), str(results_json))
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise RowsError(f"{results_json} is not in the rows format (an older table); write it again with --rows")
    rows = results["rows"]
    if not rows:
        raise RowsError(f"{results_json} holds no rows; write it again with --rows")
    for number, row in enumerate(rows, 1):
        check_row(row, f"{results_json} row {number}", trained=isinstance(row, dict) and row.get("table") == "main")
    main = [row for row in rows if row["table"] == "main"]
    for number, row in enumerate(rows, 1):
        for field in ("per_edit", "per_object_count"):  # columns of one table
            if row["table"] == "main" and set(row["report"][field]) != set(main[0]["report"][field]):
                raise RowsError(f"{results_json} row {number}: row {row['name']!r} has other report.{field} "
                                f"keys than row {main[0]['name']!r}")
    rows_files = results.get("rows_files", [])
    if not (isinstance(rows_files, list) and all(isinstance(path, str) and "`" not in path and "\n" not in path
                                                  for path in rows_files)):
        raise RowsError(f"{results_json}: rows_files is not a list of file names")
    figures = out.parent / "figures"
    plot(rows, figures)
    previous = out.read_text() if out.is_file() else ""
    # The commentary after READING_MARKER is written by hand: keep it across regenerations.
    commentary = previous[previous.index(READING_MARKER):] if READING_MARKER in previous else ""
    text = write_markdown(rows, data, figures, rows_files)
    text += "\n" + commentary if commentary else ""
    out.write_text(text)
    return text


def reusable_rows(source: Path) -> list[dict]:
    """The sound rows of an earlier results.json (none when it is missing or unreadable)."""
    if not source.is_file():
        return []
    try:
        previous = parse_json(source.read_text(), str(source))
    except RowsError as error:
        print(f"not reusing rows: {error}", file=sys.stderr)
        return []
    rows = []
    for number, row in enumerate(previous.get("rows", []) if isinstance(previous, dict) else [], 1):
        try:
            check_row(row, f"{source} row {number}", trained=isinstance(row, dict) and row.get("table") == "main")
        except RowsError as error:
            print(f"not reusing {error}", file=sys.stderr)
            continue
        rows.append(row)
    return rows


def fail(message, program: str = "shapes_results.py") -> int:
    """One line on stderr, exit status 2 (as for a bad argument)."""
    print(f"{program}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=Path, action="append", default=[],
                        help="a rows.jsonl of experiments/shapes_sweep.py (repeatable); none: render only")
    parser.add_argument("--data", default="data/shapes", help="shapes benchmark folder")
    parser.add_argument("--default", default=str(ROOT / "checkpoints" / "shapes-mini"),
                        help="embedded default model; '' leaves it out")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for evaluating the default")
    parser.add_argument("--reuse", type=Path, help="a results.json whose default rows are reused when its weights "
                        "and test split are the same (default: the one written)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    results_json = args.out.parent / "results.json"
    if not args.out.parent.is_dir():
        return fail(f"--out {args.out}: the folder {args.out.parent} does not exist")
    if args.out.is_dir():
        return fail(f"--out {args.out} is a folder; give the results.md to write")
    for path in args.rows:
        if not path.is_file():
            return fail(f"--rows {path} does not exist")
    if args.reuse is not None and not args.reuse.is_file():
        return fail(f"--reuse {args.reuse} does not exist")
    if args.rows and args.default and not Path(args.default).is_dir():
        return fail(f"--default {args.default} is not a checkpoint folder ('' leaves the default out)")
    if args.rows and args.default and not Path(args.data).is_dir():
        return fail(f"--data {args.data} is not a shapes benchmark folder (the default is evaluated on it)")
    if not args.rows and not results_json.is_file():
        return fail(f"{results_json} does not exist: give --rows to write it")
    try:
        if args.rows:
            rows = read_rows(args.rows)
            if args.default:
                for row in evaluate_default_rows(Path(args.default), Path(args.data), args.threads,
                                                 reusable_rows(args.reuse or results_json)):
                    check_row(row, f"the evaluation of {args.default}", trained=False)
                    rows.append(row)
            rows_files = [str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
                          for path in args.rows]
            results_json.write_text(json.dumps({"rows_files": rows_files, "rows": rows}, indent=1) + "\n")
        text = render(results_json, args.out, args.data)
    except (RowsError, OSError) as error:
        return fail(error)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
