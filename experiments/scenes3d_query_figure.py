"""Draw one scenes3d query: its reference, caption, target and hard negatives, for the benchmark card.

    python experiments/scenes3d_query_figure.py --data data/scenes3d --split test --out docs/figures/scenes3d_query.png

Picks the first query with both an object edit and a camera edit unless --pairid names one.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

TILE = 160
LABEL_HEIGHT = 40


def tile(image: Image.Image, title: str, frame: str | None) -> Image.Image:
    canvas = Image.new("RGB", (TILE, TILE + LABEL_HEIGHT), "white")
    canvas.paste(image.convert("RGB").resize((TILE, TILE), Image.Resampling.BICUBIC), (0, 0))
    draw = ImageDraw.Draw(canvas)
    if frame:
        draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=frame, width=4)
    for line, text in enumerate(textwrap.wrap(title, 26)[:3]):
        draw.text((4, TILE + 2 + 12 * line), text, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--pairid", type=int)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"--out: folder {args.out.parent} does not exist")
    from cir_core.data.scenes3d.read import read_scenes3d_info, read_scenes3d_labels

    try:
        entries = json.loads((args.data / f"{args.split}.json").read_text())
        labels = read_scenes3d_labels(args.data)
        suffix = read_scenes3d_info(args.data)["image_format"]
    except (OSError, ValueError) as error:
        print(f"scenes3d_query_figure.py: error: {error}", file=sys.stderr)
        return 2
    chosen = [e for e in entries if (e["pairid"] == args.pairid if args.pairid is not None
                                     else e["object_edit"] and e["camera_edit"])]
    if not chosen:
        print("scenes3d_query_figure.py: error: no such query in the split", file=sys.stderr)
        return 2
    query = chosen[0]
    picture = lambda image_id: Image.open(args.data / "images" / f"{image_id}.{suffix}")  # noqa: E731
    camera = lambda image_id: labels[image_id]["camera"]  # noqa: E731
    tiles = [tile(picture(query["reference"]), f"reference ({camera(query['reference'])})", None),
             tile(picture(query["target"]), f"target ({camera(query['target'])})", "#16a34a")]
    tiles += [tile(picture(i), f"same table, other view ({camera(i)})", "#f59e0b")
              for i in query["hard_negatives"]["views"]]
    tiles += [tile(picture(i), f"same view, other edit ({camera(i)})", "#dc2626")
              for i in query["hard_negatives"]["edits"]]
    width = TILE * len(tiles) + 6 * (len(tiles) - 1)
    figure = Image.new("RGB", (width, TILE + LABEL_HEIGHT + 24), "white")
    ImageDraw.Draw(figure).text((4, 4), f"query {query['pairid']}: \"{query['caption']}\"  "
                                         f"(groups: {', '.join(query['groups'])})", fill="black")
    for position, part in enumerate(tiles):
        figure.paste(part, (position * (TILE + 6), 24))
    figure.save(args.out)
    print(f"wrote {args.out}: query {query['pairid']}, {len(tiles)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
