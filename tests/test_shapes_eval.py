"""The shapes protocol: ranks checked against a brute-force recomputation with the tiny model,
an oracle that must reach R@1 = 100, and the report's arithmetic."""
import json
import types

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir_core.config import load_preset
from cir_core.data.shapes import ShapesCounts, read_shapes_split, write_shapes_dataset
from cir_core.data.triplets import Triplet, TripletSplit
from cir_core.evaluation.shapes import evaluate_shapes, shapes_report_from_scores
from cir_core.model import ImageEncoding, QueryEncoding
from cir_core.transforms import ImageTransform


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy machine thread hand-offs cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-eval") / "ds"
    counts = ShapesCounts(train=4, val=4, test=14, hard_negative_fraction=1.0, distractor_fraction=0.5)
    write_shapes_dataset(out, seed=0, image_size=32, counts=counts, progress=False)
    return out


def _pixels(transform, path):
    with Image.open(path) as image:
        return transform(image)


def _hand_recall(ranks, k):
    return 100.0 * sum(r < k for r in ranks) / len(ranks)


def test_ranks_match_brute_force(tiny_model, shapes_dir):
    split = read_shapes_split(shapes_dir, "test")
    report = evaluate_shapes(tiny_model, split, batch_size=5, progress=False)

    transform = ImageTransform(tiny_model.config.preprocess)
    targets = {i: tiny_model.encode_target(_pixels(transform, split.path(i))[None])[0] for i in split.gallery}
    # Batched and one-by-one encodings differ by float rounding (about 1e-7 here); the random
    # model's scores are close together, so the band stays a few ulps wide.
    tolerance = 5e-7
    exact = 0
    for triplet, rank in zip(split.triplets, report.ranks):
        reference = _pixels(transform, split.path(triplet.reference))[None]
        query = tiny_model.encode_query(reference, [triplet.caption]).query[0]  # (D,)
        scores = {i: float((vectors @ query).max()) for i, vectors in targets.items() if i != triplet.reference}
        target_score = scores[triplet.target]
        others = [s for i, s in scores.items() if i != triplet.target]
        surely_above = sum(s > target_score + tolerance for s in others)
        maybe_above = sum(s >= target_score - tolerance for s in others)
        assert surely_above <= rank <= maybe_above, (triplet.pairid, rank, surely_above, maybe_above)
        exact += surely_above == maybe_above
    assert exact >= len(split) // 2  # most ranks are pinned down exactly

    assert report.num_queries == len(split) == 14 and report.gallery_size == len(split.gallery)
    assert report.pairids == [t.pairid for t in split.triplets]
    assert max(report.ranks) > 0  # a random model: the check above saw real rankings
    for k in (1, 5, 10, 50):
        assert report.recall[f"R@{k}"] == pytest.approx(_hand_recall(report.ranks, k))
    for edit, count in report.edit_counts.items():
        edit_ranks = [r for r, t in zip(report.ranks, split.triplets) if t.edit == edit]
        assert count == len(edit_ranks)
        assert report.per_edit[edit]["R@5"] == pytest.approx(_hand_recall(edit_ranks, 5))
    assert sum(report.edit_counts.values()) == len(split)
    novel_ranks = [r for r, t in zip(report.ranks, split.triplets) if t.extras["novel"]]
    seen_ranks = [r for r, t in zip(report.ranks, split.triplets) if not t.extras["novel"]]
    assert report.num_novel == len(novel_ranks) > 0 and seen_ranks
    assert report.novel["R@10"] == pytest.approx(_hand_recall(novel_ranks, 10))
    assert report.seen["R@10"] == pytest.approx(_hand_recall(seen_ranks, 10))
    assert not tiny_model.training


class OracleModel(torch.nn.Module):
    """Knows every answer: recognises gallery images by their pixels and looks the target up.

    Its query also scores the reference above the target, so only excluding the
    reference from its own ranking puts the target first.
    """

    def __init__(self, split: TripletSplit):
        super().__init__()
        self.config = load_preset("tiny-test")
        self.device = torch.device("cpu")
        self.num_query_tokens = 1
        self.size = len(split.gallery)
        transform = ImageTransform(self.config.preprocess)
        column = {image_id: index for index, image_id in enumerate(split.gallery)}
        self.column_of_pixels = {_pixels(transform, split.path(i)).numpy().tobytes(): column[i] for i in split.gallery}
        assert len(self.column_of_pixels) == self.size  # every scene renders differently
        self.target_of = {(column[t.reference], t.caption): column[t.target] for t in split.triplets}

    def encode_images(self, pixels):
        columns = torch.tensor([self.column_of_pixels[p.numpy().tobytes()] for p in pixels])
        return ImageEncoding(vision_features=columns.view(-1, 1, 1).float(),
                             targets=F.one_hot(columns, self.size).float().unsqueeze(1))

    def encode_query(self, reference, captions):
        references = reference[:, 0, 0].long()
        targets = torch.tensor([self.target_of[(int(r), c)] for r, c in zip(references, captions)])
        query = F.one_hot(targets, self.size).float() + 2 * F.one_hot(references, self.size).float()
        return QueryEncoding(query=query, prompt=torch.zeros(len(captions), 1, 1))


def test_oracle_reaches_r1_100(shapes_dir):
    split = read_shapes_split(shapes_dir, "test")
    report = evaluate_shapes(OracleModel(split), split, batch_size=3, progress=False)
    assert report.recall == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0}
    assert report.ranks == [0] * len(split)
    assert all(recall["R@1"] == 100.0 for recall in report.per_edit.values())

    split.exclude_reference = False  # the reference now outranks every target
    kept = evaluate_shapes(OracleModel(split), split, batch_size=4, progress=False)
    assert kept.ranks == [1] * len(split) and kept.recall["R@1"] == 0.0 and kept.recall["R@5"] == 100.0


def _toy_split(edits, novel):
    gallery = ["a", "b", "c", "d"]
    triplets = [Triplet(pairid=i, reference="a", caption="x", target=t, edit=e, extras={"novel": n})
                for i, (t, e, n) in enumerate(zip(["b", "c", "d"], edits, novel))]
    return TripletSplit(name="shapes/toy", triplets=triplets, image_paths={}, gallery=gallery)


def test_report_from_hand_worked_scores():
    split = _toy_split(["color", "color", "move"], [True, False, False])
    scores = torch.tensor([
        [9.0, 5.0, 1.0, 0.0],  # target b: best once the reference a is excluded -> rank 0
        [9.0, 5.0, 1.0, 0.0],  # target c: below b -> rank 1
        [9.0, 5.0, 1.0, 1.0],  # target d ties c: ties count against the target -> rank 2
    ])
    report = shapes_report_from_scores(scores, split)
    assert report.ranks == [0, 1, 2]
    assert report.recall["R@1"] == pytest.approx(100 / 3) and report.recall["R@5"] == 100.0
    assert report.per_edit["color"]["R@1"] == 50.0 and report.per_edit["move"]["R@1"] == 0.0
    assert report.edit_counts == {"color": 2, "move": 1}
    assert report.novel["R@1"] == 100.0 and report.num_novel == 1 and report.seen["R@1"] == 0.0
    assert report.first_results == ["b", "b", "b"] and report.confusions == {}  # no labels given: not classified
    tie = shapes_report_from_scores(torch.tensor([[9.0, 5.0, 5.0, 0.0]] * 3), _toy_split(["color"] * 3, [False] * 3))
    assert tie.ranks[0] == 1 and tie.first_results[0] == "c"  # target b tied with c: a miss, c named first
    summary = json.loads(json.dumps(report.to_dict()))
    assert "ranks" not in summary and "first_results" not in summary and summary["recall"] == report.recall

    only_seen = shapes_report_from_scores(scores, _toy_split(["color"] * 3, [False] * 3))
    assert only_seen.novel == {} and only_seen.num_novel == 0


def test_report_rejects_bad_input():
    split = _toy_split(["color"] * 3, [False] * 3)
    with pytest.raises(ValueError, match="do not fit 3 queries x 4 gallery"):
        shapes_report_from_scores(torch.zeros(3, 5), split)
    split.triplets[0].target = None
    with pytest.raises(ValueError, match="needs a target"):
        shapes_report_from_scores(torch.zeros(3, 4), split)
    split.triplets[0].target = "zz"
    with pytest.raises(ValueError, match="not in the gallery"):
        shapes_report_from_scores(torch.zeros(3, 4), split)
    with pytest.raises(ValueError, match="no queries"):
        evaluate_shapes(None, TripletSplit(name="shapes/empty", triplets=[], image_paths={}, gallery=[]))


def test_reduced_precision_queries_keep_the_gallery_and_change_only_the_queries(tiny_model, shapes_dir):
    from cir_core.evaluation.features import compute_features
    from cir_core.precision import query_model

    split = read_shapes_split(shapes_dir, "test")
    exact = compute_features(tiny_model, split, progress=False)
    for precision in ("bf16", "int8"):
        fast = compute_features(tiny_model, split, progress=False, query_model=query_model(tiny_model, precision))
        assert torch.equal(fast.gallery_targets, exact.gallery_targets)
        similarity = (fast.queries * exact.queries).sum(dim=1)
        assert not torch.equal(fast.queries, exact.queries) and bool((similarity > 0.98).all())
        report = evaluate_shapes(tiny_model, split, progress=False, query_precision=precision)
        assert report.num_queries == len(split.triplets)
    assert query_model(tiny_model, "fp32") is tiny_model
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"))  # only the device is looked at before refusing
    with pytest.raises(ValueError, match="CPU speed-up"):
        query_model(on_gpu, "int8")


def test_int8_copies_scale_each_output_row_of_every_linear_layer(tiny_model):
    from cir_core.precision import query_model

    quantized = query_model(tiny_model, "int8")
    originals = dict(tiny_model.named_modules())
    layers = [(name, module) for name, module in quantized.named_modules() if hasattr(module, "weight")
              and callable(module.weight) and isinstance(originals.get(name), torch.nn.Linear)]
    assert len(layers) == sum(isinstance(m, torch.nn.Linear) for m in tiny_model.modules())
    for name, layer in layers:
        weight = layer.weight()
        assert weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric), name
        exact = originals[name].weight.detach()
        row_step = exact.abs().amax(dim=1, keepdim=True) / 127  # one int8 step of each row's own range
        assert bool(((weight.dequantize() - exact).abs() <= row_step + 1e-6).all()), name
