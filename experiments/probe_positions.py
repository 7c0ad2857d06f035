"""Where a shapes model keeps (or loses) object positions: two held-out probes and a placement test.

    python experiments/probe_positions.py [--model local-dir:checkpoints/shapes-mini] [--data data/shapes]

Encodes a split's gallery (default: val) once, then trains small probes on 80% of the
images and scores them on the other 20%:

1. patch place: a linear classifier that reads ONE vision token (after ln_vision) and
   names which of the P patches it came from. The Q-Former reads tokens by content
   (cross-attention), so a token whose content does not say where it is cannot pass its
   object's position on. Chance is 1/P.
2. scene from target vectors: an MLP that reads an image's Q target vectors (what the
   gallery ranks by) and names what sits in each cell of the 3x3 grid (empty or which
   shape). Its accuracy is compared with always answering the most common class per cell.

3. one object, nine places: each of several single objects is drawn alone in each of the
   9 cells; for every two placements of the same object, each target vector of one is
   matched with its most similar vector of the other (cosine), averaged. 1.000 means the
   target vectors cannot tell where the object is, whatever a probe would do with them.

4. lone-object queries, nine places: for each query of the split whose target is one
   object, is the target scored above the same object drawn in every other cell (the
   reference's cell left out, as retrieval leaves the reference out)? Per edit type, with
   the median score margin. 3 asks whether the gallery side can tell placements apart;
   this asks whether the composed query says which one it wants.

They say whether the position information exists where retrieval needs it; they change
nothing in the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class SceneDecoder(nn.Module):
    """One vector per image (any trailing shape, flattened) -> per-region logits of each attribute."""

    def __init__(self, in_features: int, regions: int, classes: tuple[int, ...], hidden: int = 512):
        super().__init__()
        self.regions, self.classes = regions, tuple(classes)
        self.mlp = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.GELU(),
                                 nn.Linear(hidden, regions * sum(self.classes)))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        logits = self.mlp(features.flatten(1)).view(features.shape[0], self.regions, sum(self.classes))
        return list(logits.split(self.classes, dim=-1))


def split_rows(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * count)
    return order[:cut], order[cut:]


def patch_place_accuracy(vision: torch.Tensor, steps: int, seed: int) -> float:
    """Held-out accuracy of naming each patch token's index from its content alone."""
    patches = F.layer_norm(vision[:, 1:].float(), (vision.shape[-1],))  # (N, P, W), class token dropped
    count, places, width = patches.shape
    train, test = split_rows(count, seed)
    labels = torch.arange(places).expand(count, -1)
    torch.manual_seed(seed)
    probe = torch.nn.Linear(width, places)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(probe(patches[train]).flatten(0, 1), labels[train].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe(patches[test]).argmax(-1) == labels[test]).float().mean())


def scene_accuracy(targets: torch.Tensor, cells: torch.Tensor, steps: int, seed: int) -> tuple[float, float]:
    """(held-out per-cell accuracy of empty/shape from the target vectors, majority-class accuracy)."""
    from cir_core.region_supervision import attribute_loss

    features = targets.float().flatten(1)
    train, test = split_rows(len(features), seed)
    classes = int(cells.max()) + 1
    torch.manual_seed(seed)
    decoder = SceneDecoder(features.shape[1], cells.shape[1], (classes,))
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (128,), generator=generator)]
        loss = attribute_loss(decoder(features[batch]), cells[batch, :, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((decoder(features[test])[0].argmax(-1) == cells[test]).float().mean())
    majority = cells[train].mode(dim=0).values  # (R,) most common class of each cell
    return accuracy, float((cells[test] == majority).float().mean())


def placement_similarity(targets: torch.Tensor) -> torch.Tensor:
    """(K, Q, D) target vectors of one object in K places -> (K, K): mean over one's vectors of the best cosine in the other."""
    vectors = F.normalize(targets.float(), dim=-1)
    return torch.einsum("iqd,jpd->ijqp", vectors, vectors).amax(dim=-1).mean(dim=-1)


def nine_placements(model, appearance: tuple[str, str, str]):
    """One object (shape, colour, size) drawn alone in each grid cell -> (scenes, (9, Q, D) target vectors)."""
    from cir_core.data.shapes_scene import GRID, SceneObject, ShapesScene, render_scene
    from cir_core.transforms import ImageTransform

    transform = ImageTransform(model.config.preprocess)
    size = model.config.preprocess.image_size
    scenes = [ShapesScene((SceneObject(row, col, *appearance),)) for row in range(GRID) for col in range(GRID)]
    pixels = torch.stack([transform(render_scene(scene, size)) for scene in scenes])
    with torch.inference_mode():
        return scenes, model.encode_target(pixels)


def single_object_placements(model, objects: list[tuple[str, str, str]]) -> dict[str, float]:
    """Mean and max of `placement_similarity` over every pair of distinct cells and each object."""
    pairs = []
    for appearance in objects:
        scenes, targets = nine_placements(model, appearance)
        off_diagonal = ~torch.eye(len(scenes), dtype=torch.bool)
        pairs.append(placement_similarity(targets)[off_diagonal])
    pairs = torch.cat(pairs)
    return {"mean": round(float(pairs.mean()), 4), "max": round(float(pairs.max()), 4),
            "min": round(float(pairs.min()), 4)}


def placement_choices(scores: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) scores of each query against K placements, (N,) index of the right one ->
    (right, margin): whether the right one scores highest, and its score minus the best other's."""
    right_scores = scores.gather(1, truth[:, None])[:, 0]
    others = scores.scatter(1, truth[:, None], float("-inf"))
    return scores.argmax(dim=1) == truth, right_scores - others.amax(dim=1)


def lone_object_queries(model, split, scenes, batch_size: int = 32) -> dict:
    """Measure 4 over the split's queries whose target is one object (see the module docstring)."""
    from cir_core.evaluation.features import encode_queries

    lone = [t for t in split.triplets if t.target is not None and len(scenes[t.target].objects) == 1]
    if not lone:
        return {"queries": 0, "right": 0, "rate": None, "per_edit": {}, "median_margin": None}
    with torch.inference_mode():
        queries = encode_queries(model, dataclasses.replace(split, triplets=lone), batch_size, progress=False)
    placements = {}  # appearance -> (scene ids, target vectors), each object encoded once
    per_edit: dict[str, list[int]] = {}
    margins = []
    for query, triplet in zip(queries, lone):
        appearance = scenes[triplet.target].objects[0].appearance
        if appearance not in placements:
            placed, targets = nine_placements(model, appearance)
            placements[appearance] = ([scene.id for scene in placed], targets)
        ids, targets = placements[appearance]
        kept = [i for i, scene_id in enumerate(ids) if scene_id != triplet.reference]  # as retrieval does
        scores = model.score(query[None], targets[kept])
        truth = torch.tensor([[ids[i] for i in kept].index(triplet.target)])
        right, margin = placement_choices(scores, truth)
        counts = per_edit.setdefault(triplet.edit, [0, 0])
        counts[0] += int(right[0])
        counts[1] += 1
        margins.append(float(margin[0]))
    right_total = sum(right for right, _ in per_edit.values())
    return {"queries": len(lone), "right": right_total, "rate": round(right_total / len(lone), 4),
            "per_edit": {edit: f"{right}/{total}" for edit, (right, total) in sorted(per_edit.items())},
            "median_margin": round(float(torch.tensor(margins).median()), 4)}


PLACEMENT_OBJECTS = [(shape, "blue", size) for shape in ("square", "circle", "triangle") for size in ("small", "large")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=f"local-dir:{ROOT / 'checkpoints' / 'shapes-mini'}")
    parser.add_argument("--data", default=str(ROOT / "data" / "shapes"), help="a `cir data shapes` folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", type=int, default=3000, help="gallery images probed (the first ones)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--query-split", default="test",
                        help="split whose one-object-target queries measure 4 reads ('' to skip it)")
    args = parser.parse_args(argv)
    if args.max_images < 50 or args.steps < 1:
        parser.error("--max-images must be at least 50 and --steps at least 1")
    torch.set_num_threads(args.threads)

    from cir_core.checkpoints import load_model
    from cir_core.data.shapes import read_shapes_scenes, read_shapes_split
    from cir_core.data.shapes_scene import region_attributes
    from cir_core.evaluation.features import encode_gallery

    try:
        split = read_shapes_split(args.data, args.split)
        query_split = read_shapes_split(args.data, args.query_split) if args.query_split else None
        scenes = read_shapes_scenes(args.data)
        model = load_model(args.model).eval()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    split.gallery = split.gallery[:args.max_images]
    with torch.inference_mode():
        targets, vision = encode_gallery(model, split, keep_vision_features=True)
    cells = torch.stack([region_attributes(scenes[image_id])[:, 0] for image_id in split.gallery])  # (N, 9)
    places = vision.shape[1] - 1
    scene, majority = scene_accuracy(targets, cells, args.steps, args.seed)
    report = {
        "model": args.model, "split": args.split, "images": len(split.gallery),
        "patch_place_accuracy": round(patch_place_accuracy(vision, args.steps, args.seed), 3),
        "patch_place_chance": round(1 / places, 3),
        "cell_content_from_target_vectors_accuracy": round(scene, 3),
        "cell_content_majority_class_accuracy": round(majority, 3),
        "one_object_nine_places_similarity": single_object_placements(model, PLACEMENT_OBJECTS),
    }
    if query_split is not None:
        report[f"lone_object_queries_{args.query_split}"] = lone_object_queries(model, query_split, scenes)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
