"""Regenerate docs/results_scenes3d.md and its figures from the scenes3d rows of the results sweep.

    python experiments/scenes3d_results.py --rows docs/results_rows.jsonl

The rows are those `experiments/shapes_sweep.py --benchmark scenes3d` writes (rows of other
benchmarks in the same file are passed over): SPRC, the image prompt (SPRC's two passes,
the prompt never reading the caption), the static prompt and late fusion at three seeds,
the pseudo-word at one, every one the 3D recipe at one budget. The page gives per mode the
mean ± sample standard deviation over seeds of recall over all queries and per group (the
object edits alone, "object edit", are the queries in neither "view angle" nor "view +
object", counted from the row's own hits), Welch's t-test of SPRC against each alternative
with its 95% interval (and the paired test over seeds, which share their draws), the misses
by kind, one figure per question, and a reading whose every sentence is chosen by whether an
interval excludes zero. A row without its commit, data fingerprint, recipe hash, device or
seconds is refused; rows the page asks for and does not have are listed by name.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]  # run as a script from anywhere

from cir_core.config import QUERY_MODE_DESCRIPTIONS  # noqa: E402
from cir_core.data.query_groups import VIEW_ANGLE  # noqa: E402
from cir_core.data.scenes3d.misses import MISS_KINDS  # noqa: E402
from cir_core.data.scenes3d.plan import GROUP_ORDER, VIEW_AND_OBJECT  # noqa: E402
from seed_statistics import LEVEL, TTest, paired_test, welch_test  # noqa: E402
from shapes_results import (RowsError, Spread, _is, _recall_problems, device_kind, fail,  # noqa: E402
                            is_current_recipe, md_text, parse_json, provenance_section, recipe_text)
from sweep_benchmarks import SCENES3D  # noqa: E402

PROGRAM = "scenes3d_results.py"  # how error lines name it
ALL = "all queries"
OBJECT_EDIT = "object edit"  # the queries in neither VIEW_ANGLE nor VIEW_AND_OBJECT
RECALLS = ("R@1", "R@5", "R@10", "R@50")
GROUP_RECALLS = ("R@1", "R@5")  # what `cir eval scenes3d` reports per group
FIELDS = ("name", "benchmark", "group", "description", "table", "steps", "seed", "query_mode", "recipe",
          "overrides", "precision", "threads", "concurrent_rows", "seconds_per_step", "report")
PROVENANCE = ("code_commit", "code_dirty", "data_sha256", "recipe_sha256", "device", "train_seconds")
REPORT_FIELDS = ("num_queries", "gallery_size", "recall", "per_group", "misses")
STEPS_ASKED = 500  # the budget of the page's rows when it has none yet
# The questions, in the order the page answers them: an edit kind's group and its words.
EDIT_KINDS = ((VIEW_ANGLE, "viewpoint edits", "view_angle"), (OBJECT_EDIT, "object edits", "object_edit"),
              (VIEW_AND_OBJECT, "combined edits", "view_and_object"))
TESTED_GROUPS = (ALL, VIEW_ANGLE, OBJECT_EDIT, VIEW_AND_OBJECT)
CAPTION_FIGURE = "results_scenes3d_caption_in_prompt.png"
MISSES_FIGURE = "results_scenes3d_misses.png"


# ---------------------------------------------------------------------- rows
def read_rows(paths: list[Path]) -> list[dict]:
    """The scenes3d rows of rows.jsonl files, in file order; a row lacking provenance, a malformed
    row or a name twice is refused (RowsError naming the file, line and row)."""
    rows, seen = [], set()
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = parse_json(line, where)
            if isinstance(row, dict) and row.get("benchmark") != SCENES3D.name:
                continue
            check_row(row, where)
            if row["name"] in seen:
                raise RowsError(f"{where}: row {row['name']!r} appears twice; keep one")
            seen.add(row["name"])
            rows.append(row)
    return rows


def check_row(row, where: str) -> None:
    """Refuse (RowsError) a row without the provenance the sweep records, or with a field missing,
    of the wrong type, or a report whose counts do not add up."""
    if not isinstance(row, dict):
        raise RowsError(f"{where}: a row is a JSON object, not {type(row).__name__}")
    label = f"{where}: row {row.get('name')!r:.80}"
    unrecorded = [f for f in PROVENANCE if row.get(f) is None]
    if unrecorded:
        raise RowsError(f"{label} lacks provenance ({', '.join(unrecorded)}): only rows written by "
                        "experiments/shapes_sweep.py --benchmark scenes3d belong on this page")
    report = row.get("report")
    missing = [f for f in FIELDS if f not in row]
    missing += [f"report.{f}" for f in REPORT_FIELDS if not isinstance(report, dict) or f not in report]
    if missing:
        raise RowsError(f"{label} lacks {', '.join(missing)}")
    problems = _field_problems(row) + _report_problems(report)
    if problems:
        raise RowsError(f"{label}: {'; '.join(problems)}")


def _field_problems(row: dict) -> list[str]:
    problems = []
    if not isinstance(row["group"], str) or row["group"] not in SCENES3D.variants:
        problems.append(f"group {row['group']!r:.40} is not one of the sweep's: {', '.join(SCENES3D.variants)}")
    elif not _is(row["seed"], (int,)) or row["name"] != SCENES3D.row(row["group"], row["seed"]).name:
        problems.append(f"its name is not the sweep's for group {row['group']} and seed {row['seed']!r:.20}")
    if row["table"] != "main":
        problems.append(f"table {row['table']!r:.40} is not 'main'")
    for field, kinds in (("description", (str,)), ("query_mode", (str,)), ("recipe", (str,)), ("precision", (str,)),
                         ("device", (str,)), ("steps", (int,)), ("seed", (int,)), ("threads", (int,)),
                         ("concurrent_rows", (int,)), ("overrides", (dict,)), ("train_seconds", (int, float)),
                         ("seconds_per_step", (int, float)), ("code_dirty", (bool,))):
        if not (isinstance(row[field], bool) if kinds == (bool,) else _is(row[field], kinds)):
            problems.append(f"{field} is {row[field]!r:.40}")
    for field in ("code_commit", "data_sha256", "recipe_sha256", "recipe"):  # shown in code spans
        if not isinstance(row[field], str) or not row[field] or "`" in row[field] or "\n" in row[field]:
            problems.append(f"{field} is {row[field]!r:.40}, not text without backticks")
    if _is(row["steps"], (int,)) and row["steps"] < 1:
        problems.append(f"steps is {row['steps']}")
    return problems


def _report_problems(report: dict) -> list[str]:
    queries = report["num_queries"]
    if not _is(queries, (int,)) or queries < 1 or not _is(report["gallery_size"], (int,)):
        return [f"report.num_queries is {queries!r:.40} and report.gallery_size {report['gallery_size']!r:.40}"]
    problems = _recall_problems(report["recall"], "report.recall", RECALLS)
    if not isinstance(report["per_group"], dict) or not isinstance(report["misses"], dict):
        return problems + ["report.per_group and report.misses must be objects"]
    for name, figures in report["per_group"].items():
        where = f"report.per_group.{name:.40}"
        group_problems = _recall_problems(figures, where, GROUP_RECALLS)
        count = figures.get("queries") if isinstance(figures, dict) else None
        if not _is(count, (int,)) or not 1 <= count <= queries:
            group_problems.append(f"{where}.queries is {count!r:.40}")
        elif not group_problems and not _whole(figures["R@1"] * count / 100):
            group_problems.append(f"{where}.R@1 is not a share of its {count} queries")
        problems += group_problems
    if not all(_is(n, (int,)) and n >= 0 for n in report["misses"].values()):
        problems.append("report.misses holds a count that is not a whole number >= 0")
    elif not problems and sum(report["misses"].values()) != round(queries * (100 - report["recall"]["R@1"]) / 100):
        problems.append(f"report.misses add up to {sum(report['misses'].values())}, not to the queries missed at R@1")
    return problems


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-6


def main_budget(rows: list[dict]) -> list[dict]:
    """The rows of the budget most rows share (steps, recipe file and contents, data); ties: more steps."""
    def budget(row):
        return row["steps"], row["recipe"], row["recipe_sha256"], row["data_sha256"]

    counts = Counter(budget(row) for row in rows)
    chosen = max(counts, key=lambda key: (counts[key], key[0]), default=None)
    return [row for row in rows if budget(row) == chosen]


def by_group(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by group in the sweep's order, seeds in order."""
    return {group: sorted((r for r in rows if r["group"] == group), key=lambda r: r["seed"])
            for group in SCENES3D.variants if any(r["group"] == group for r in rows)}


# ---------------------------------------------------------------------- numbers
def group_recall(report: dict, group: str) -> dict | None:
    """{"R@1", "R@5", "queries"} of `group` (ALL: every query; OBJECT_EDIT: derived from the hits over
    all queries less those of the camera groups); None when the row has no query of it."""
    if group == ALL:
        return {**{k: report["recall"][k] for k in GROUP_RECALLS}, "queries": report["num_queries"]}
    if group != OBJECT_EDIT:
        return report["per_group"].get(group)
    camera = [report["per_group"][name] for name in (VIEW_ANGLE, VIEW_AND_OBJECT) if name in report["per_group"]]
    queries = report["num_queries"] - sum(figures["queries"] for figures in camera)
    if queries <= 0:
        return None
    hits = {k: report["recall"][k] * report["num_queries"] - sum(f[k] * f["queries"] for f in camera)
            for k in GROUP_RECALLS}  # percent x queries: 100 x hits
    return {**{k: value / queries for k, value in hits.items()}, "queries": queries}


def values(rows: list[dict], group: str, k: str = "R@1") -> list[float] | None:
    """Per seed, recall@k of `group`; None when a row has no query of it."""
    figures = [group_recall(r["report"], group) for r in rows]
    return None if any(f is None for f in figures) else [float(f[k]) for f in figures]


def group_names(rows: list[dict]) -> list[str]:
    """Every group some row has, the questions' first, then in the benchmark's order."""
    present = {name for r in rows for name in r["report"]["per_group"]}
    order = [ALL, VIEW_ANGLE, OBJECT_EDIT, VIEW_AND_OBJECT] + [g for g in GROUP_ORDER if g not in TESTED_GROUPS]
    listed = [g for g in order if g in present or (g in (ALL, OBJECT_EDIT) and rows)]
    return listed + sorted(present - set(listed))


def comparison(first: list[dict], second: list[dict], group: str) -> tuple[TTest | None, TTest | None, str]:
    """Welch's and the paired test (seeds present in both) of `group` R@1, first - second; with the
    reason when Welch's is not computed."""
    a, b = values(first, group), values(second, group)
    if a is None or b is None:
        return None, None, "a row has no such query"
    if len({device_kind(r) for r in first + second}) > 1:
        return None, None, "trained on both CPU and GPU"
    welch = welch_test(a, b)
    seeds = sorted({r["seed"] for r in first} & {r["seed"] for r in second})
    pick = {r["seed"]: v for r, v in zip(first, a)}, {r["seed"]: v for r, v in zip(second, b)}
    paired = paired_test([pick[0][s] for s in seeds], [pick[1][s] for s in seeds]) if len(seeds) > 1 else None
    reason = "fewer than two seeds of one of them" if min(len(a), len(b)) < 2 else "no spread over seeds"
    return welch, paired, "" if welch else reason


def miss_shares(rows: list[dict]) -> dict[str, Spread]:
    """Per miss kind, its share of the row's misses (percent), over seeds."""
    shares = {kind: [] for kind in MISS_KINDS}
    for row in rows:
        total = sum(row["report"]["misses"].values())
        for kind in shares:
            shares[kind].append(100.0 * row["report"]["misses"].get(kind, 0) / total if total else 0.0)
    return {kind: Spread(v) for kind, v in shares.items()}


# ---------------------------------------------------------------------- words
def label(group: str) -> str:
    return SCENES3D.variants[group][0]


def interval_text(test: TTest) -> str:
    return f"{LEVEL:.0%} CI {test.low:+.1f} to {test.high:+.1f}"


def verdict(test: TTest | None, reason: str) -> str:
    """What the interval of SPRC minus another mode shows, and nothing more."""
    if test is None:
        return f"not tested ({reason})"
    if test.low > 0:
        return f"SPRC ahead by {test.difference:.1f} points ({interval_text(test)})"
    if test.high < 0:
        return f"SPRC behind by {-test.difference:.1f} points ({interval_text(test)})"
    return f"no difference shown ({test.difference:+.1f} points, {interval_text(test)}, which holds 0)"


def figure_line(figures: Figures, name: str, alt: str) -> list[str]:
    """The figure's link, when this render drew it (a file left by an earlier render is never linked)."""
    return [f"![{alt}]({figures.folder.name}/{name})", ""] if name in figures.drawn else []


def edit_question(grouped: dict[str, list[dict]], group: str, words: str, figures: Figures, slug: str) -> list[str]:
    lines = [f"### Does SPRC beat each alternative on {words}? (`{md_text(group)}`)", ""]
    others = [other for other in grouped if other != "sprc"]
    if "sprc" not in grouped or not others:
        return lines + ["Not answered: the page has no SPRC row or no alternative yet.", ""]
    ahead, not_ahead = [], []
    for other in others:
        welch, _, reason = comparison(grouped["sprc"], grouped[other], group)
        lines.append(f"- Against the {md_text(label(other))}: {verdict(welch, reason)}.")
        (ahead if welch is not None and welch.low > 0 else not_ahead).append(label(other))
    if not not_ahead:
        lines += ["", f"SPRC is ahead of every alternative on {words}."]
    else:
        lines += ["", f"SPRC is not shown ahead of: {', '.join(md_text(n) for n in not_ahead)}"
                  + (f"; it is ahead of: {', '.join(md_text(n) for n in ahead)}." if ahead else ".")]
    return lines + [""] + figure_line(figures, f"results_scenes3d_{slug}.png", f"R@1 on {words} per mode")


def caption_question(grouped: dict[str, list[dict]], figures: Figures) -> list[str]:
    lines = ["### Does reading the caption in the prompt pass matter? (SPRC against the image prompt)", ""]
    if "sprc" not in grouped or "image_prompt" not in grouped:
        return lines + ["Not answered: the page lacks the SPRC or the image-prompt rows.", ""]
    helps, hurts, unshown = [], [], []
    for group in TESTED_GROUPS:
        welch, _, reason = comparison(grouped["sprc"], grouped["image_prompt"], group)
        lines.append(f"- {md_text(group)}: {verdict(welch, reason)}.")
        if welch is not None and welch.excludes_zero:
            (helps if welch.low > 0 else hurts).append(group)
        else:
            unshown.append(group)
    lines.append("")
    if helps:
        lines.append(f"Reading the caption helps on: {', '.join(md_text(g) for g in helps)}.")
    if hurts:
        lines.append(f"Reading the caption hurts on: {', '.join(md_text(g) for g in hurts)}.")
    if unshown:
        lines.append(f"No effect of reading it is shown on: {', '.join(md_text(g) for g in unshown)}.")
    return lines + [""] + figure_line(figures, CAPTION_FIGURE, "SPRC minus image prompt, R@1, with intervals")


def misses_question(grouped: dict[str, list[dict]], figures: Figures) -> list[str]:
    lines = ["### Which kinds of miss dominate for each mode?", ""]
    for group, rows in grouped.items():
        shares = miss_shares(rows)
        leader, runner_up = sorted(MISS_KINDS, key=lambda kind: -shares[kind].mean)[:2]
        if shares[leader].mean - shares[runner_up].mean < 1e-9:
            lines.append(f"- {md_text(label(group))}: no kind leads (\"{leader}\" and \"{runner_up}\" each "
                         f"{shares[leader].mean:.0f}% of the misses over seeds).")
            continue
        leading = sum(r["report"]["misses"].get(leader, 0) > max(r["report"]["misses"].get(kind, 0)
                                                                 for kind in MISS_KINDS if kind != leader)
                      for r in rows)
        claim = (f"most misses are \"{leader}\"" if shares[leader].mean > 50 else
                 f"\"{leader}\" is the most frequent kind of miss, without a majority")
        lines.append(f"- {md_text(label(group))}: {claim} ({shares[leader].mean:.0f}% of the misses, mean over "
                     f"seeds; first in {leading} of {len(rows)} seed{'s' if len(rows) != 1 else ''}).")
    return lines + [""] + figure_line(figures, MISSES_FIGURE, "misses by kind per mode")


# ---------------------------------------------------------------------- markdown
def write_markdown(rows: list[dict], figures: Figures, rows_files: list[str]) -> str:
    main = main_budget(rows)
    other = [r for r in rows if r not in main]
    grouped = by_group(main)
    steps = main[0]["steps"] if main else STEPS_ASKED
    missing = [name for name in SCENES3D.rows_by_name if name not in {r["name"] for r in main}]
    source = " ".join(f"--rows {path}" for path in rows_files)
    wanted = ",".join(missing) if main and missing else "all"
    lines = ["# scenes3d results: SPRC against its alternatives, by kind of edit", "",
             "Test split of the scenes3d benchmark (`cir data scenes3d --out data/scenes3d --seed 0`; "
             "reference excluded from its own ranking; recall in percent). Every row is the 3D recipe, "
             f"`{SCENES3D.config.relative_to(ROOT)}`, trained for the same number of steps in its own query mode, "
             "and evaluated with `cir eval scenes3d`'s protocol by the sweep that trained it. The modes: "
             + "; ".join(f"`{mode}`, {QUERY_MODE_DESCRIPTIONS[mode]}" for mode in SCENES3D.variants) + ". "
             "The image prompt is the control for whether the prompt should read the caption: it keeps "
             "everything of SPRC but that.", "",
             f"Regenerate this page: `python experiments/scenes3d_results.py {source}`. Rows come from "
             "`python -m cir_core data scenes3d --out data/scenes3d --seed 0`, then "
             "`python experiments/shapes_sweep.py --benchmark scenes3d --data data/scenes3d --device cuda "
             f"--steps {steps} --parallel 7 --rows {wanted} --out OUT` (`--device cpu --threads 2` on a CPU "
             "machine), then "
             "`cat OUT/rows.jsonl >> docs/results_rows.jsonl` and `cat OUT/metrics.jsonl >> "
             "docs/results_training_logs.jsonl`.", ""]
    if missing:
        lines += [f"**Rows missing ({len(missing)} of {len(SCENES3D.rows)}):** {', '.join(missing)}. "
                  + ("No scenes3d row is in the rows files yet, so there is nothing to compare."
                     if not main else "Tests need two seeds of both modes; answers below say which are not "
                     "tested for want of rows."), ""]
    if main:
        lines += results_section(main, grouped, figures)
    if other:
        lines += ["## Rows at another budget, recipe or data (left out of every table above)", "",
                  "| row | steps | recipe | data sha256 | R@1 |", "|---|---|---|---|---|"]
        lines += [f"| {md_text(r['name'])} | {r['steps']} | {recipe_text(r)} | `{r['data_sha256']}` | "
                  f"{r['report']['recall']['R@1']:.1f} |" for r in other] + [""]
    return "\n".join(lines)


def results_section(main: list[dict], grouped: dict[str, list[dict]], figures: Figures) -> list[str]:
    anchor = main[0]
    lines = [f"## {anchor['steps']} steps of {recipe_text(anchor)}", "",
             f"{anchor['report']['num_queries']} test queries, gallery of {anchor['report']['gallery_size']} images. "
             "Cells are mean ± sample standard deviation over the seeds trained (column \"seeds\").", "",
             "| mode | seeds | R@1 | R@5 | R@10 | R@50 | train s | s/step |", "|---|---|---|---|---|---|---|---|"]
    for group, rows in grouped.items():
        cells = [Spread([r["report"]["recall"][k] for r in rows]).text() for k in RECALLS]
        lines.append(f"| {md_text(label(group))} (`{group}`) | {', '.join(str(r['seed']) for r in rows)} | "
                     f"{' | '.join(cells)} | "
                     f"{statistics.fmean(r['train_seconds'] for r in rows):.0f} | "
                     f"{statistics.fmean(r['seconds_per_step'] for r in rows):.3f} |")
    lines += ["", f"R@1 per group (\"{OBJECT_EDIT}\": the object edits without a camera move):", "",
              "| group | queries | " + " | ".join(f"`{group}`" for group in grouped) + " |",
              "|---|---|" + "---|" * len(grouped)]
    for name in group_names(main):
        figures_of = group_recall(anchor["report"], name)
        cells = [Spread(v).text() if (v := values(rows, name)) is not None else "-" for rows in grouped.values()]
        lines.append(f"| {md_text(name)} | {figures_of['queries'] if figures_of else '-'} | {' | '.join(cells)} |")
    lines += tests_section(grouped) + misses_section(grouped)
    lines += ["", "## Reading", "",
              f"Each answer quotes SPRC's R@1 minus the other mode's with its {LEVEL:.0%} Welch interval, and claims "
              "a difference only where the interval excludes 0. The intervals are not corrected for being "
              f"{tested_count(grouped)} at once: when nothing differs, about one in twenty excludes 0 by chance.", ""]
    start = start_sentence(anchor)
    lines += [start, ""] if start else []
    for group, words, slug in EDIT_KINDS:
        lines += edit_question(grouped, group, words, figures, slug)
    lines += caption_question(grouped, figures) + misses_question(grouped, figures)
    return lines + provenance_section(main) + [""]


def tests_section(grouped: dict[str, list[dict]]) -> list[str]:
    lines = ["", f"SPRC against each alternative, R@1 (difference = SPRC minus the other; {LEVEL:.0%} intervals; "
             "Welch's t-test on the seed values, and the paired t-test over the seeds both have, since a seed "
             "fixes the order of the batches for every mode; computed by `experiments/scenes3d_results.py`):", "",
             "| SPRC against | queries | difference | Welch interval | t | df | p | paired interval | paired p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for other in grouped:
        if other == "sprc" or "sprc" not in grouped:
            continue
        for group in TESTED_GROUPS:
            welch, paired, reason = comparison(grouped["sprc"], grouped[other], group)
            head = f"| {md_text(label(other))} | {md_text(group)} | "
            if welch is None:
                lines.append(head + f"not tested: {reason} | | | | | | |")
                continue
            pair = f"{paired.low:+.1f} to {paired.high:+.1f} | {paired.p:.3f}" if paired else "- | -"
            lines.append(head + f"{welch.difference:+.1f} | {welch.low:+.1f} to {welch.high:+.1f} | {welch.t:.2f} | "
                         f"{welch.df:.1f} | {welch.p:.3f} | {pair} |")
    return lines if len(lines) > 5 else []


def tested_count(grouped: dict[str, list[dict]]) -> int:
    """How many Welch intervals the page computes (the tests table's and the reading's are the same ones)."""
    return sum(comparison(grouped["sprc"], grouped[other], group)[0] is not None
               for other in grouped if other != "sprc" and "sprc" in grouped for group in TESTED_GROUPS)


def misses_section(grouped: dict[str, list[dict]]) -> list[str]:
    lines = ["", "Misses by kind (queries whose target is not first, by what the first result got wrong; "
             "mean ± sd over seeds of the count, and of its share of the row's misses):", "",
             "| mode | misses | " + " | ".join(md_text(kind) for kind in MISS_KINDS) + " |",
             "|---|---|" + "---|" * len(MISS_KINDS)]
    for group, rows in grouped.items():
        shares = miss_shares(rows)
        counts = {kind: Spread([float(r["report"]["misses"].get(kind, 0)) for r in rows]) for kind in MISS_KINDS}
        total = Spread([float(sum(r["report"]["misses"].values())) for r in rows])
        lines.append(f"| {md_text(label(group))} | {total.text()} | "
                     + " | ".join(f"{counts[k].text()} ({shares[k].text()}%)" for k in MISS_KINDS) + " |")
    return lines


def start_sentence(row: dict) -> str:
    """Where the recipe starts its rows from, read from the recipe file when it is the rows' own."""
    if not is_current_recipe(row):
        return ""
    start = json.loads((ROOT / row["recipe"]).read_text()).get("model", {}).get("checkpoint")
    if not start:
        return ""
    return (f"Every row starts from `{md_text(start)}`, the recipe's `model.checkpoint`, and fine-tunes all of it in "
            "its own query mode: the alternatives start from the same weights as SPRC, not from their own training.")


# ---------------------------------------------------------------------- figures
@dataclass
class Figures:
    """Where the page's figures go, and which this render drew."""

    folder: Path
    drawn: set[str] = field(default_factory=set)

    def save(self, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(self.folder / name, dpi=120)
        plt.close(fig)
        self.drawn.add(name)


def plot(main: list[dict], figures: Figures) -> None:
    """One figure per question of the reading (those that have rows to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = by_group(main)
    figures.folder.mkdir(parents=True, exist_ok=True)
    names = list(grouped)
    for group, words, slug in EDIT_KINDS:
        seeds = [values(rows, group) for rows in grouped.values()]
        if any(v is None for v in seeds):
            continue
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.4))
        spreads = [Spread(v) for v in seeds]
        ax.barh(names[::-1], [s.mean for s in spreads][::-1], xerr=[s.std for s in spreads][::-1], color="#4c72b0",
                capsize=3)
        for y, v in enumerate(seeds[::-1]):
            ax.plot(v, [y] * len(v), "k.", markersize=5)
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"R@1 (%) on {words} ({group}); bars: mean ± sd, dots: seeds")
        figures.save(fig, f"results_scenes3d_{slug}.png")
    if "sprc" in grouped and "image_prompt" in grouped:
        tests = [(group, comparison(grouped["sprc"], grouped["image_prompt"], group)[0]) for group in TESTED_GROUPS]
        tests = [(group, test) for group, test in tests if test is not None]
        if tests:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            for y, (group, test) in enumerate(tests[::-1]):
                ax.errorbar([test.difference], [y], xerr=[[test.difference - test.low], [test.high - test.difference]],
                            fmt="o", color="#c44e52" if test.excludes_zero else "#4c72b0", capsize=4)
            ax.axvline(0, color="grey", linewidth=1)
            ax.set_yticks(range(len(tests)), [group for group, _ in tests[::-1]])
            ax.set_xlabel(f"R@1 of SPRC minus image prompt (points), {LEVEL:.0%} Welch interval")
            figures.save(fig, CAPTION_FIGURE)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.6))
    left = [0.0] * len(names)
    for kind, color in zip(MISS_KINDS, ("#dd8452", "#c44e52", "#8c8c8c")):
        counts = [statistics.fmean(r["report"]["misses"].get(kind, 0) for r in rows) for rows in grouped.values()]
        ax.barh(names[::-1], counts[::-1], left=left[::-1], color=color, label=kind)
        left = [a + b for a, b in zip(left, counts)]
    ax.set_xlabel("misses (queries whose target is not first), mean over seeds")
    ax.legend(fontsize=7, loc="lower right")
    figures.save(fig, MISSES_FIGURE)


# ---------------------------------------------------------------------- main
def render(rows: list[dict], out: Path, rows_files: list[str]) -> str:
    """Draw the figures (when there are rows) and write the page; its text."""
    figures = Figures(out.parent / "figures")
    main = main_budget(rows)
    if main:
        plot(main, figures)
    text = write_markdown(rows, figures, rows_files)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=Path, action="append",
                        help="a rows.jsonl of experiments/shapes_sweep.py (repeatable; default: "
                             "docs/results_rows.jsonl)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results_scenes3d.md")
    args = parser.parse_args(argv)
    paths = args.rows or [ROOT / "docs" / "results_rows.jsonl"]
    if not args.out.parent.is_dir():
        return fail(f"--out {args.out}: the folder {args.out.parent} does not exist", PROGRAM)
    if args.out.is_dir():
        return fail(f"--out {args.out} is a folder; give the page to write", PROGRAM)
    for path in paths:
        if not path.is_file():
            return fail(f"--rows {path} does not exist", PROGRAM)
    rows_files = [str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p) for p in paths]
    try:
        rows = read_rows(paths)
        render(rows, args.out, rows_files)
    except (RowsError, OSError, UnicodeDecodeError) as error:
        return fail(error, PROGRAM)
    print(f"wrote {args.out} from {len(rows)} scenes3d rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
