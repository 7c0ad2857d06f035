"""Regenerate the shapes results table and plots (docs/results.md, docs/figures/).

    python benchmarks/shapes_results.py --data data/shapes --train all --steps 200

trains every baseline and ablation with the same budget (`--steps` optimisation steps of
the embedded default's recipe, batch 64, one OneCycle schedule each), then evaluates them,
the embedded default model and its inference-time baselines on the shapes test split.
Without `--train`, existing runs under `--runs` are evaluated again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# name -> (description, training overrides on top of configs/shapes_mini.json)
TRAINED = {
    "sprc": ("SPRC (Q=8, align 0.4)", {}),
    "static_prompt": ("static learned prompt (BLIP4CIR+Bi-like)", {"model.overrides.query_mode": '"static_prompt"'}),
    "pseudo_word": ("pseudo-word (Pic2Word/SEARLE-like)", {"model.overrides.query_mode": '"pseudo_word"'}),
    "late_fusion": ("late fusion, trained", {"model.overrides.query_mode": '"late_fusion"'}),
    "prompt_4": ("SPRC, prompt length 4", {"model.overrides.qformer.num_query_tokens": "4"}),
    "prompt_16": ("SPRC, prompt length 16", {"model.overrides.qformer.num_query_tokens": "16"}),
    "prompt_32": ("SPRC, prompt length 32", {"model.overrides.qformer.num_query_tokens": "32"}),
    "align_0": ("SPRC, alignment weight 0", {"model.overrides.loss.align_weight": "0.0"}),
    "align_0.8": ("SPRC, alignment weight 0.8", {"model.overrides.loss.align_weight": "0.8"}),
}
READING_MARKER = "## Reading the table"  # hand-written commentary starts here in the output
# Query modes evaluated on the embedded default's weights without training.
INFERENCE_BASELINES = {
    "image_only": "image only (reference's own vectors)",
    "text_only": "text only (caption with the auxiliary prompt)",
    "late_fusion": "late fusion (sum of the two above)",
}


def train_entry(name: str, args) -> Path:
    from cir_core.train import main as train_main

    out = Path(args.runs) / name
    overrides = {"out_dir": str(out), "data.root": args.data, "max_steps": str(args.steps), "eval_every": "0",
                 "checkpoint_every": str(args.steps), "num_threads": str(args.threads), **TRAINED[name][1]}
    argv = ["--config", str(ROOT / "configs" / "shapes_mini.json")] + [f"--{k}={v}" for k, v in overrides.items()]
    start = time.monotonic()
    train_main(argv)
    (out / "wall_seconds.txt").write_text(f"{time.monotonic() - start:.0f}\n")
    return out


def evaluate_model(model, split) -> dict:
    from cir_core.evaluation.shapes import evaluate_shapes

    return evaluate_shapes(model, split, progress=False).to_dict()


def with_mode(model, mode: str):
    import copy

    variant = copy.copy(model)
    variant.config = dataclasses.replace(model.config, query_mode=mode)
    return variant


def collect(args) -> list[dict]:
    import cir_core
    from cir_core.data.shapes import read_shapes_split

    split = read_shapes_split(args.data, "test")
    rows = []
    default = cir_core.load_model(f"local-dir:{args.default}")
    rows.append({"name": "default", "description": "SPRC, embedded default (full recipe)",
                 "report": evaluate_model(default, split), "steps": default_steps(args.default)})
    for mode, description in INFERENCE_BASELINES.items():
        rows.append({"name": f"default/{mode}", "description": f"{description}, default weights",
                     "report": evaluate_model(with_mode(default, mode), split), "steps": 0})
    for name, (description, _) in TRAINED.items():
        folder = Path(args.runs) / name / "best"
        if not folder.is_dir():
            print(f"skipping {name}: no run at {folder}", file=sys.stderr)
            continue
        cached = folder.parent / "test_report.json"
        if cached.is_file() and cached.stat().st_mtime > (folder / "model.safetensors").stat().st_mtime:
            report = json.loads(cached.read_text())  # evaluated after this checkpoint was written
        else:
            report = evaluate_model(cir_core.load_model(folder), split)
            cached.write_text(json.dumps(report))
        rows.append({"name": name, "description": description, "steps": args.steps, "report": report})
    return rows


def default_steps(folder: str) -> int | None:
    card = Path(folder) / "training.json"
    return json.loads(card.read_text()).get("max_steps") if card.is_file() else None


def write_markdown(rows: list[dict], args, figures: Path) -> str:
    edits = sorted(rows[0]["report"]["per_edit"])
    lines = [
        "# Shapes benchmark results",
        "",
        "Test split of the shapes benchmark (`cir data shapes --seed 0`): "
        f"{rows[0]['report']['num_queries']} queries, gallery of {rows[0]['report']['gallery_size']} scenes, "
        "reference excluded from its own ranking. Recall in percent.",
        "",
        f"Regenerate: `python benchmarks/shapes_results.py --data {args.data} --train all --steps {args.steps}` "
        "(trains every baseline and ablation with the same budget, then evaluates); without `--train` it "
        "re-evaluates the existing runs.",
        "",
        "| model | steps | R@1 | R@5 | R@10 | R@50 | novel R@1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["report"]
        lines.append(f"| {row['description']} | {row['steps'] if row['steps'] is not None else '-'} | "
                     f"{r['recall']['R@1']:.1f} | {r['recall']['R@5']:.1f} | {r['recall']['R@10']:.1f} | "
                     f"{r['recall']['R@50']:.1f} | {r['novel']['R@1']:.1f} |")
    lines += ["", "R@1 per edit type:", "", "| model | " + " | ".join(edits) + " |",
              "|---|" + "---|" * len(edits)]
    for row in rows:
        per = row["report"]["per_edit"]
        lines.append(f"| {row['description']} | " + " | ".join(f"{per[e]['R@1']:.1f}" for e in edits) + " |")
    lines += ["", f"![R@1 by model]({figures.name}/results_r1.png)", "",
              f"![R@1 per edit type]({figures.name}/results_per_edit.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict], figures: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    names = [row["description"] for row in rows]
    values = [row["report"]["recall"]["R@1"] for row in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1))
    ax.barh(names[::-1], values[::-1], color="#4c72b0")
    ax.set_xlabel("R@1 (%)")
    ax.set_xlim(0, 100)
    fig.tight_layout()
    fig.savefig(figures / "results_r1.png", dpi=120)
    plt.close(fig)

    edits = sorted(rows[0]["report"]["per_edit"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        ax.bar([e + i * width for e in range(len(edits))],
               [row["report"]["per_edit"][e]["R@1"] for e in edits], width, label=row["description"])
    ax.set_xticks([e + 0.4 - width / 2 for e in range(len(edits))], edits)
    ax.set_ylabel("R@1 (%)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(figures / "results_per_edit.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/shapes", help="shapes benchmark folder")
    parser.add_argument("--default", default=str(ROOT / "checkpoints" / "shapes-mini"), help="embedded default model")
    parser.add_argument("--runs", default="runs/ablations", help="folder of the baseline and ablation runs")
    parser.add_argument("--train", default="", help="comma-separated entries to (re)train first, or 'all'")
    parser.add_argument("--steps", type=int, default=200, help="training steps of every trained entry")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args(argv)
    names = list(TRAINED) if args.train == "all" else [n for n in args.train.split(",") if n]
    unknown = [n for n in names if n not in TRAINED]
    if unknown:
        parser.error(f"unknown entries {unknown}; choose from {list(TRAINED)}")
    for name in names:
        train_entry(name, args)
    torch.set_num_threads(args.threads)
    rows = collect(args)
    out = Path(args.out)
    figures = out.parent / "figures"
    plot(rows, figures)
    # The commentary after READING_MARKER is written by hand: keep it across regenerations.
    previous = out.read_text() if out.is_file() else ""
    commentary = previous[previous.index(READING_MARKER):] if READING_MARKER in previous else ""
    out.write_text(write_markdown(rows, args, figures) + ("\n" + commentary if commentary else ""))
    (out.parent / "results.json").write_text(json.dumps(rows, indent=2))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
