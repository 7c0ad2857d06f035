"""Ship a scenes3d training run as the app's embedded model: weights, measured card, index seed, examples.

    python experiments/ship_scenes3d_mini.py --run runs/scenes3d-mini --test-data assets/scenes3d \
        --out checkpoints/scenes3d-mini --examples assets/examples/scenes3d.json

Copies the run's best checkpoint (named after --out) and recipe into --out, evaluates it on --test-data with
the `cir eval scenes3d` protocol (fp32 with the prompt measure, then int8 queries as the
app encodes them on a CPU), writes `training.json` (the run's own provenance and
validation curve from its metrics.jsonl, the test figures with the data fingerprint and
the commit they were measured at), the model card `README.md` rendered from it, the test
gallery's index seed, and the curated examples: view-angle queries the model gets right
and ones it gets wrong, then the same for view + object and object edits.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from cir_core.data.folders import data_fingerprint  # noqa: E402
from cir_core.provenance import code_version, describe_device  # noqa: E402

MODEL_FILES = ("model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json")
EXAMPLE_GROUPS = (("view angle", 4, 4), ("view + object", 2, 2), ("move", 1, 1), ("remove", 1, 0), ("colour", 1, 0))
CAMERA_EDITS = ("orbit", "height", "zoom")


# ---------------------------------------------------------------------- the run
def read_run(run: Path) -> dict:
    """Provenance, validation curve and training time as the run's metrics.jsonl recorded them."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    starts = [r for r in records if "code_commit" in r]
    if not starts:
        raise SystemExit(f"{run}/metrics.jsonl records no provenance (a run of an older trainer)")
    curve = [[r["step"], round(r["elapsed_s"], 1), r["val"]["recall/R@1"]] for r in records if "val" in r]
    steps = [r for r in records if "loss" in r]
    best = max(curve, key=lambda point: point[2]) if curve else None
    config = json.loads((run / "train_config.json").read_text())
    info_file = Path(config["data"]["root"]) / "info.json"
    splits = json.loads(info_file.read_text())["splits"] if info_file.is_file() else {}
    return {"started": starts[-1], "restarts": len(starts) - 1, "validation_r1_curve": curve,
            "batch_size": config["batch_size"], "edits_per_reference": config["edits_per_reference"],
            "val_queries": min(config["data"].get("val_max_queries") or 10**9, splits.get("val", {}).get("triplets", 0)),
            "train_triplets": splits.get("train", {}).get("triplets"),
            "train_references": splits.get("train", {}).get("references"),
            "steps": steps[-1]["step"] if steps else 0, "train_wall_seconds": round(steps[-1]["elapsed_s"], 1) if steps
            else 0.0, "best_step": best[0] if best else None}


# ---------------------------------------------------------------------- evaluation
def evaluate(out: Path, test_data: Path, batch_size: int) -> tuple[dict, dict, object]:
    from cir_core.checkpoints import load_model
    from cir_core.evaluation.scenes3d import evaluate_scenes3d, read_scenes3d_for_eval

    model = load_model(f"local-dir:{out}").float().eval()
    split, views = read_scenes3d_for_eval(test_data, "test")
    fp32 = evaluate_scenes3d(model, split, views, batch_size, progress=True)
    int8 = evaluate_scenes3d(model, split, views, batch_size, progress=True, query_precision="int8", prompt=False)
    return fp32.summary, int8.summary, fp32


def curated_examples(evaluation) -> list[dict]:
    """Per group of EXAMPLE_GROUPS, successes then failures, spread over the camera edits."""
    triplets, ranks = evaluation.split.triplets, evaluation.report.ranks
    chosen, used = [], set()
    for group, successes, failures in EXAMPLE_GROUPS:
        for wanted, count in ((True, successes), (False, failures)):
            members = [(t, r) for t, r in zip(triplets, ranks) if group in t.extras.get("groups", ())
                       and (r == 0) == wanted and t.pairid not in used]
            # Round-robin over the camera edits, so that orbit, height and zoom all show up.
            by_edit = {edit: [m for m in members if edit in m[0].extras.get("groups", ())] for edit in CAMERA_EDITS}
            order = [m for batch in zip(*[v for v in by_edit.values() if v]) for m in batch] or members
            order += [m for m in members if m not in order]
            for triplet, rank in order[:count]:
                used.add(triplet.pairid)
                chosen.append({"pairid": int(triplet.pairid), "reference": triplet.reference,
                               "target": triplet.target, "caption": triplet.caption,
                               "groups": list(triplet.extras.get("groups", ())), "target_rank": rank + 1})
    return chosen


# ---------------------------------------------------------------------- the card
def render_card(training: dict, name: str) -> str:
    test, int8, run = training["test"], training["int8_queries"], training["run"]
    recall = test["recall"]
    rows = [f"| all | {test['num_queries']} | {recall['R@1']:.1f} | {recall['R@5']:.1f} | "
            f"{int8['recall']['R@1']:.1f} |"]
    for group, figures in test["per_group"].items():
        rows.append(f"| {group} | {figures['queries']} | {figures['R@1']:.1f} | {figures['R@5']:.1f} | "
                    f"{int8['per_group'][group]['R@1']:.1f} |")
    misses = ", ".join(f"{kind} {count}" for kind, count in test["misses"].items())
    curve = ", ".join(f"{step}: {r1:.1f}" for step, _, r1 in run["validation_r1_curve"])
    prompt = test.get("prompt", {})
    started = run["started"]
    precision = "fp32" if started["precision"] == "fp32" else f"{started['precision']} autocast"
    return f"""# {name}: the embedded scenes3d model (the app's default)

A small SPRC model (sentence-level prompts, max-over-queries retrieval) fine-tuned on the
[scenes3d benchmark](../../docs/scenes3d.md), whose edits move the camera, so that the app
shows composed retrieval succeeding and failing on real changes of viewpoint, on a CPU.
Same architecture as [shapes-mini](../shapes-mini/README.md), whose weights it starts from
(34.6 M parameters, 96 px ViT of 4 layers, 6-layer Q-Former from MiniLM-L6, 8 queries).

Files: `model.safetensors` (fp16), `config.json`, `vocab.txt` + `tokenizer_config.json`,
`train_config.json` (the recipe as it ran), `training.json` (provenance, validation curve
and every figure below), `gallery_index_seed.npz` (the shipped test gallery's vectors).

## Recipe
`configs/scenes3d_mini.json`: shapes-mini's weights, {run['steps']} steps of batch {run['batch_size']}
({run['batch_size'] // run['edits_per_reference']} reference views x {run['edits_per_reference']} edits each: the other edits
of a view are a query's hard negatives), AdamW with OneCycle, loss itc + 0.4 rtc + 0.4 align +
1.0 description (each target's vectors against its description, which names the camera).
Data: the default scenes3d benchmark (seed 0: {run['train_triplets']:,} train triplets of
{run['train_references']:,} reference views).

```bash
cir data scenes3d --out data/scenes3d --seed 0
cir train --config configs/scenes3d_mini.json
```

The run: {run['steps']} steps in {run['train_wall_seconds'] / 60:.0f} min on {started['device']}
({precision}), code {started['code_commit']}{' with uncommitted changes' if started['code_dirty'] else ''},
data fingerprint {started['data_sha256']}. This checkpoint is step {run['best_step']}, the best by
validation R@1 ({run['val_queries']} val queries), by step: {curve}.

## Test figures
`cir eval scenes3d --model local-dir:checkpoints/{name} --data assets/scenes3d --json`
on the shipped test split (seed 4242, never seen in training: {test['num_queries']} queries,
{training['test_gallery']} images, each query's reference excluded from its ranking;
data fingerprint {training['test_data_sha256']}, measured at {training['measured_at']}).
The last column encodes the queries in int8 as the app does on a CPU (`--query-precision int8`).

| queries | n | R@1 | R@5 | R@1, int8 queries |
|---|---:|---:|---:|---:|
{chr(10).join(rows)}

R@10 {recall['R@10']:.1f}, R@50 {recall['R@50']:.1f}. What the first result got wrong, when it
was not the target: {misses}. The target's description is among the 5 descriptions
nearest the composed query for {prompt.get('composed_top5', float('nan')):.1f}% of the queries
(the prompt alone: {prompt.get('prompt_top5', float('nan')):.1f}%).

## Limits
A miniature model in a miniature world: 96-pixel views, 3 to 6 objects of 4 shapes, captions
from templates. Orbit edits, which move every object across the image, are its weakest
group; see the per-group rows above and [docs/scenes3d.md](../../docs/scenes3d.md).
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a cir train output folder")
    parser.add_argument("--test-data", type=Path, required=True, help="a scenes3d folder with a test split")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (replaced)")
    parser.add_argument("--examples", type=Path, help="curated examples file to write")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    run = read_run(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(args.run / "best" / name, args.out / name)
    # The model is named after its folder (a fine-tune keeps its starting checkpoint's name), so
    # that the app, index caches and seeds say which model they serve; the weights are the run's.
    config = json.loads((args.out / "config.json").read_text())
    (args.out / "config.json").write_text(json.dumps({**config, "name": args.out.name}, indent=2))
    shutil.copyfile(args.run / "train_config.json", args.out / "train_config.json")
    fp32, int8, evaluation = evaluate(args.out, args.test_data, args.batch_size)
    commit, dirty = code_version()
    training = {"recipe": "configs/scenes3d_mini.json", "run": run, "test": fp32,
                "int8_queries": {"recall": int8["recall"], "per_group": int8["per_group"]},
                "test_gallery": len(evaluation.split.gallery), "test_data_sha256": data_fingerprint(args.test_data),
                "measured_at": f"{commit}{' (uncommitted changes)' if dirty else ''}",
                "measured_on": describe_device("cpu")}
    (args.out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    (args.out / "README.md").write_text(render_card(training, args.out.name))
    from cir_core.cli import main as cir

    with tempfile.TemporaryDirectory() as index_dir:
        seed = args.out / "gallery_index_seed.npz"
        code = cir(["build-index", "--data", str(args.test_data), "--dataset", "scenes3d", "--model",
                    f"local-dir:{args.out}", "--out", str(Path(index_dir) / "index"), "--export-seed", str(seed),
                    "--no-progress"])
        if code != 0:
            raise SystemExit(f"building the index seed failed ({code})")
    if args.examples:
        args.examples.parent.mkdir(parents=True, exist_ok=True)
        examples = {"description": "Curated queries of the shipped scenes3d test split (seed 4242) shown as examples "
                                   "in the app: view-angle queries the embedded model gets right, then ones it gets "
                                   "wrong, then view + object and object edits. An entry is shown only when pairid, "
                                   "reference, target and caption all match the gallery's benchmark; target_rank "
                                   f"is the target's rank under {args.out.name} (fp32).",
                    "benchmark": "scenes3d", "seed": 4242, "split": "test", "queries": curated_examples(evaluation)}
        args.examples.write_text(json.dumps(examples, indent=1) + "\n")
    print(f"shipped {args.run} as {args.out}: test R@1 {fp32['recall']['R@1']:.1f}, view angle "
          f"{fp32['per_group'].get('view angle', {}).get('R@1', float('nan')):.1f}, int8 R@1 "
          f"{int8['recall']['R@1']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
