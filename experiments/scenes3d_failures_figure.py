"""Draw typical misses of a model on scenes3d: per row a query's reference, its target and what
the model ranked first, with the kind of the miss and the target's rank.

    python experiments/scenes3d_failures_figure.py --model local-dir:checkpoints/scenes3d-mini \
        --data assets/scenes3d --group "view angle" --rows 6 --out docs/figures/scenes3d_view_angle_misses.png

Rows are the group's misses, one per miss kind in turn (so that each kind shows up), in
split order; the ranking is the `cir eval scenes3d` protocol (reference excluded).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes3d_query_figure import LABEL_HEIGHT, TILE, tile  # noqa: E402

CAPTION_WIDTH = 260


def typical_misses(evaluation, views, group: str, rows: int) -> list[tuple]:
    """(triplet, rank, first id, kind) of the group's misses, the kinds taken in turn."""
    from cir_core.data.scenes3d.misses import miss_kind

    by_kind: dict[str, list[tuple]] = {}
    for triplet, rank, first in zip(evaluation.split.triplets, evaluation.report.ranks,
                                    evaluation.report.first_results):
        if rank > 0 and group in triplet.extras.get("groups", ()):
            kind = miss_kind(views[first], views[triplet.target])
            by_kind.setdefault(kind, []).append((triplet, rank, first, kind))
    chosen = []
    while len(chosen) < rows and any(by_kind.values()):
        for misses in by_kind.values():
            if misses and len(chosen) < rows:
                chosen.append(misses.pop(0))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--group", default="view angle")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"--out: folder {args.out.parent} does not exist")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cir_core.checkpoints import load_model
    from cir_core.evaluation.scenes3d import evaluate_scenes3d, read_scenes3d_for_eval

    split, views = read_scenes3d_for_eval(args.data, args.split)
    evaluation = evaluate_scenes3d(load_model(args.model).float().eval(), split, views, prompt=False)
    rows = typical_misses(evaluation, views, args.group, args.rows)
    if not rows:
        print(f"scenes3d_failures_figure.py: no misses in group {args.group!r}", file=sys.stderr)
        return 2
    row_height = TILE + LABEL_HEIGHT + 6
    figure = Image.new("RGB", (CAPTION_WIDTH + 3 * (TILE + 6), row_height * len(rows) + 24), "white")
    draw = ImageDraw.Draw(figure)
    draw.text((4, 4), f"{args.group}: typical misses of {args.model} on {split.name} "
                      "(reference | target, green | first result, red)", fill="black")
    for row, (triplet, rank, first, kind) in enumerate(rows):
        top = 24 + row * row_height
        camera = lambda image_id: views[image_id][1]  # noqa: E731
        text = [f'"{triplet.caption}"', "", f"miss: {kind}", f"target ranked {rank + 1}"]
        for line, words in enumerate(text):
            draw.text((4, top + 14 * line), words[:42], fill="black")
        tiles = [tile(Image.open(split.image_paths[triplet.reference]), f"reference {camera(triplet.reference)}", None),
                 tile(Image.open(split.image_paths[triplet.target]), f"target {camera(triplet.target)}", "#16a34a"),
                 tile(Image.open(split.image_paths[first]), f"first {camera(first)}", "#dc2626")]
        for column, part in enumerate(tiles):
            figure.paste(part, (CAPTION_WIDTH + column * (TILE + 6), top))
    figure.save(args.out)
    print(f"wrote {args.out}: {len(rows)} misses of {args.group!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
