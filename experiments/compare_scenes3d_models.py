"""Two scenes3d models side by side on the same queries: R@1 over all queries and per group,
misses by kind, the prompt's faithfulness, and an exact paired test of each R@1 difference.

    python experiments/compare_scenes3d_models.py --baseline local-dir:checkpoints/scenes3d-mini \\
        --candidate local-dir:runs/scenes3d-mini-camera/best --data assets/scenes3d [--json OUT]

Both models rank the same split with the `cir eval scenes3d` protocol (fp32, reference
excluded). A query is a hit when its target ranks first. Because both models answer the
same queries, a difference is tested with McNemar's exact test on the queries where only
one of them is right (two-sided), not by comparing two independent proportions. The
printed table is Markdown; --json writes every figure with the models' fingerprints, the
data fingerprint and the commit.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from cir_core.data.folders import data_fingerprint  # noqa: E402
from cir_core.provenance import code_version, describe_device  # noqa: E402

ALL = "all queries"


def mcnemar_exact(only_baseline: int, only_candidate: int) -> float:
    """Two-sided exact McNemar p-value: under no difference, each discordant query is the
    candidate's with probability 1/2."""
    if only_baseline < 0 or only_candidate < 0:
        raise ValueError("discordant counts must be >= 0")
    total = only_baseline + only_candidate
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, k) for k in range(min(only_baseline, only_candidate) + 1)) / 2 ** total
    return min(1.0, 2 * tail)


@dataclass
class PairedRow:
    """R@1 of both models over one set of queries, and the paired test of their difference."""

    name: str  # "all queries" or a group name
    queries: int
    baseline_r1: float  # percent
    candidate_r1: float  # percent
    only_baseline: int  # queries only the baseline gets right
    only_candidate: int  # queries only the candidate gets right
    p_value: float  # exact McNemar, two-sided

    @property
    def difference(self) -> float:
        return self.candidate_r1 - self.baseline_r1


def paired_rows(groups: list[tuple[str, ...]], baseline_hits: list[bool], candidate_hits: list[bool],
                order: list[str]) -> list[PairedRow]:
    """One row over all queries, then one per group in `order` (groups no query has are left out);
    `groups[i]` are the groups of query i."""
    if not len(groups) == len(baseline_hits) == len(candidate_hits):
        raise ValueError("groups and hits must cover the same queries")
    names = [ALL] + [name for name in order if any(name in g for g in groups)]
    rows = []
    for name in names:
        members = [i for i, g in enumerate(groups) if name == ALL or name in g]
        base = sum(baseline_hits[i] for i in members)
        cand = sum(candidate_hits[i] for i in members)
        only_base = sum(baseline_hits[i] and not candidate_hits[i] for i in members)
        only_cand = sum(candidate_hits[i] and not baseline_hits[i] for i in members)
        rows.append(PairedRow(name, len(members), 100 * base / len(members), 100 * cand / len(members),
                              only_base, only_cand, mcnemar_exact(only_base, only_cand)))
    return rows


def markdown(rows: list[PairedRow], baseline: dict, candidate: dict) -> str:
    lines = ["| queries | n | baseline R@1 | candidate R@1 | difference | only baseline / only candidate right "
             "| p (exact McNemar) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.name} | {row.queries} | {row.baseline_r1:.1f} | {row.candidate_r1:.1f} | "
                     f"{row.difference:+.1f} | {row.only_baseline} / {row.only_candidate} | {row.p_value:.3g} |")
    lines += ["", "| | baseline | candidate |", "|---|---:|---:|"]
    for kind in baseline["misses"]:
        lines.append(f"| misses: {kind} | {baseline['misses'][kind]} | {candidate['misses'].get(kind, 0)} |")
    for key in ("R@5", "R@10", "R@50"):
        lines.append(f"| {key} | {baseline['recall'][key]:.1f} | {candidate['recall'][key]:.1f} |")
    if "prompt" in baseline and "prompt" in candidate:
        lines.append(f"| composed query top-5 description | {baseline['prompt']['composed_top5']:.1f}% "
                     f"| {candidate['prompt']['composed_top5']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="model URI (local-dir:...)")
    parser.add_argument("--candidate", required=True, help="model URI (local-dir:...)")
    parser.add_argument("--data", type=Path, required=True, help="a scenes3d folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-prompt", action="store_true", help="skip the faithfulness measure")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)

    from cir_core.checkpoints import CheckpointError, load_model, weights_fingerprint
    from cir_core.data.scenes3d.plan import GROUP_ORDER
    from cir_core.evaluation.scenes3d import evaluate_scenes3d, read_scenes3d_for_eval

    try:
        split, views = read_scenes3d_for_eval(args.data, args.split)
        models = {role: load_model(uri).float().eval() for role, uri in
                  (("baseline", args.baseline), ("candidate", args.candidate))}
    except (CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    evaluations = {role: evaluate_scenes3d(model, split, views, args.batch_size, prompt=not args.no_prompt)
                   for role, model in models.items()}
    groups = [tuple(t.extras.get("groups", ())) for t in split.triplets if t.target is not None]
    hits = {role: [rank == 0 for rank in evaluation.report.ranks] for role, evaluation in evaluations.items()}
    rows = paired_rows(groups, hits["baseline"], hits["candidate"], list(GROUP_ORDER))
    summaries = {role: evaluation.summary for role, evaluation in evaluations.items()}
    print(markdown(rows, summaries["baseline"], summaries["candidate"]))
    if args.json:
        commit, dirty = code_version()
        record = {"baseline": args.baseline, "candidate": args.candidate,
                  "weights": {role: weights_fingerprint(model) for role, model in models.items()},
                  "data": str(args.data), "split": args.split, "data_sha256": data_fingerprint(args.data),
                  "code_commit": commit, "code_dirty": dirty, "device": describe_device("cpu"),
                  "rows": [asdict(row) for row in rows], "summaries": summaries}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
