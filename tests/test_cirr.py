"""CIRR: the reader on the real rc2 annotation files, the protocol on hand-worked rankings,
the submission files, and cached/chunked features, with tiny stand-in images."""
import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from cir_core.data.cirr import read_cirr
from cir_core.data.triplets import Triplet, TripletSplit
from cir_core.evaluation.cirr import (
    cirr_predictions, cirr_report_from_scores, evaluate_cirr, write_cirr_submission,
)
from cir_core.evaluation.features import RetrievalFeatures, compute_features, score_in_chunks
from cir_core.model import SPRCModel
from cir_core.transforms import ImageTransform
from fuzzing import corrupt_file

SHARED_DATA = Path(os.environ.get("CIR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIRR_ANNOTATIONS = SHARED_DATA / "cirr"
needs_real_files = pytest.mark.skipif(not (CIRR_ANNOTATIONS / "captions").is_dir(),
                                      reason=f"real CIRR annotations not found under {CIRR_ANNOTATIONS}")


def real_cirr(kind: str, split: str = "val"):
    folder = "captions" if kind == "captions" else "image_splits"
    prefix = "cap" if kind == "captions" else "split"
    return json.loads((CIRR_ANNOTATIONS / folder / f"{prefix}.rc2.{split}.json").read_text())


def write_png(path: Path, seed: int) -> None:
    """A tiny 8x8 image with its own colours, so different images get different features."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (8, 8))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64)])
    image.save(path)


def make_cirr_standin(root: Path, query_sets: int = 2, gallery_size: int = 54, split: str = "val") -> Path:
    """An official-layout cirr_dataset folder from the real val annotations, restricted in size.

    Queries: every real val triplet of the first `query_sets` img_sets. Gallery: the members
    of those sets plus further real val images up to `gallery_size`. split "test1" drops
    the target fields (as the real test1 file does) and moves images under test1/.
    """
    captions, name_to_relpath = real_cirr("captions"), real_cirr("image_splits")
    set_ids = list(dict.fromkeys(record["img_set"]["id"] for record in captions))[:query_sets]
    records = [record for record in captions if record["img_set"]["id"] in set_ids]
    names = list(dict.fromkeys(m for record in records for m in record["img_set"]["members"]))
    names += [n for n in name_to_relpath if n not in names][:max(0, gallery_size - len(names))]
    if split == "test1":
        records = [{k: v for k, v in record.items() if k not in ("target_hard", "target_soft")} for record in records]
        relpaths = {name: f"./test1/{name}.png" for name in names}
    else:
        relpaths = {name: name_to_relpath[name] for name in names}
    for kind, data in (("captions", records), ("image_splits", relpaths)):
        path = root / "cirr" / kind / f"{'cap' if kind == 'captions' else 'split'}.rc2.{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    for index, relpath in enumerate(relpaths.values()):
        write_png(root / relpath, seed=index)
    return root


# ------------------------------------------------------------------ reader on the real files
@needs_real_files
def test_reader_parses_every_real_val_record(tmp_path):
    captions, name_to_relpath = real_cirr("captions"), real_cirr("image_splits")
    for relpath in name_to_relpath.values():  # the reader only checks existence: empty files are enough
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).touch()
    split = read_cirr(SHARED_DATA, "val", image_root=tmp_path)
    assert split.name == "cirr/val" and split.exclude_reference
    assert len(split) == len(captions) == 4181
    assert split.gallery == list(name_to_relpath) and len(split.gallery) == 2297
    for triplet, record in zip(split.triplets, captions):
        assert triplet.pairid == record["pairid"]
        assert (triplet.reference, triplet.target, triplet.caption) == (
            record["reference"], record["target_hard"], record["caption"])
        assert triplet.extras["members"] == record["img_set"]["members"]
        assert triplet.extras["target_soft"] == record["target_soft"]
    first = split.triplets[0]
    assert split.path(first.reference) == tmp_path / "dev" / f"{first.reference}.png"


@needs_real_files
def test_train_paths_follow_the_nested_image_splits(tmp_path):
    name_to_relpath = real_cirr("image_splits", "train")
    names = list(name_to_relpath)[:3]
    (tmp_path / "cirr" / "captions").mkdir(parents=True)
    (tmp_path / "cirr" / "image_splits").mkdir(parents=True)
    record = {"pairid": 7, "reference": names[0], "target_hard": names[1], "target_soft": {names[1]: 1.0},
              "caption": "make it red", "img_set": {"id": 1, "members": names, "reference_rank": 0, "target_rank": 1}}
    (tmp_path / "cirr" / "captions" / "cap.rc2.train.json").write_text(json.dumps([record]))
    (tmp_path / "cirr" / "image_splits" / "split.rc2.train.json").write_text(json.dumps(name_to_relpath))
    split = read_cirr(tmp_path, "train", image_root=tmp_path / "images", check_images=False)
    assert len(split.gallery) == len(name_to_relpath) == 16939
    relpath = name_to_relpath[names[0]]
    assert relpath.startswith("./train/")
    assert split.path(names[0]) == tmp_path / "images" / relpath[2:]


@needs_real_files
def test_missing_images_are_counted_and_named(tmp_path):
    name_to_relpath = real_cirr("image_splits")
    absent = sorted(name_to_relpath)[:3]
    for name, relpath in name_to_relpath.items():
        if name not in absent:
            (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / relpath).touch()
    with pytest.raises(FileNotFoundError) as error:
        read_cirr(SHARED_DATA, "val", image_root=tmp_path)
    message = str(error.value)
    assert "3 of 2297 images listed in cirr/image_splits/split.rc2.val.json are missing" in message
    assert str(tmp_path / "dev") in message
    assert any(name in message for name in absent)


@needs_real_files
def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cap\.rc2\.train\.json"):
        read_cirr(SHARED_DATA, "train", check_images=False)  # the mirror has no train captions
    with pytest.raises(ValueError, match="unknown CIRR split"):
        read_cirr(SHARED_DATA, "test2")


def test_corrupt_and_malformed_annotations_are_reported(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    (tmp_path / "image_splits" / "split.rc2.val.json").write_text(json.dumps({"a": "./dev/a.png"}))
    (tmp_path / "captions" / "cap.rc2.val.json").write_text("[{\"pairid\": 1,")
    with pytest.raises(ValueError, match=r"cap\.rc2\.val\.json is not valid JSON"):
        read_cirr(tmp_path, "val", check_images=False)
    (tmp_path / "captions" / "cap.rc2.val.json").write_text(json.dumps([{"pairid": 1, "reference": "a"}]))
    with pytest.raises(ValueError, match="record 0 lacks caption, img_set, target_hard"):
        read_cirr(tmp_path, "val", check_images=False)
    record = {"pairid": 1, "reference": "a", "target_hard": "zzz", "caption": "x", "img_set": {"members": ["a", "zzz"]}}
    (tmp_path / "captions" / "cap.rc2.val.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match="1 images used in .* are not listed in .* \\(first: zzz\\)"):
        read_cirr(tmp_path, "val", check_images=False)


def write_cirr_annotations(root: Path, records: list, relpaths: dict, split: str = "val") -> Path:
    """An official-layout annotation folder holding exactly `records` and `relpaths` (no images)."""
    for kind, data in (("captions", records), ("image_splits", relpaths)):
        path = root / "cirr" / kind / f"{'cap' if kind == 'captions' else 'split'}.rc2.{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return root


SMALL_RELPATHS = {name: f"./dev/{name}.png" for name in ("a", "b", "c", "d")}


def small_record(pairid: int = 1, **changes) -> dict:
    record = {"pairid": pairid, "reference": "a", "target_hard": "b", "target_soft": {"b": 1.0},
              "caption": "make it red", "img_set": {"id": 7, "members": ["a", "b", "c", "d"]}}
    record.update(changes)
    return record


@pytest.mark.parametrize("changes, message", [
    ({"pairid": [1]}, r"record 0 has pairid \[1\]; expected a whole number"),
    ({"pairid": None}, "record 0 has pairid None; expected a whole number"),
    ({"pairid": 1.5}, "record 0 has pairid 1.5; expected a whole number"),
    ({"pairid": True}, "record 0 has pairid True; expected a whole number"),
    ({"reference": ["a"]}, r"record 0 \(pairid 1\) has reference \['a'\]; expected an image name"),
    ({"target_hard": ""}, "has target_hard ''; expected an image name"),
    ({"caption": None}, "has caption None; expected text"),
    ({"target_soft": ["b"]}, "has target_soft \\['b'\\]; expected an object of image name -> score"),
    ({"target_hard": "a"}, "has its reference 'a' as its target"),
    ({"img_set": {"id": 7, "members": []}}, "has no img_set.members list of image names"),
    ({"img_set": {"id": 7, "members": ["a", 5]}}, "has no img_set.members list of image names"),
])
def test_cirr_records_with_bad_fields_are_refused_naming_the_file(tmp_path, changes, message):
    root = write_cirr_annotations(tmp_path, [small_record(**changes)], SMALL_RELPATHS)
    with pytest.raises(ValueError, match=message) as caught:
        read_cirr(root, "val", check_images=False)
    assert "cap.rc2.val.json" in str(caught.value)


@pytest.mark.parametrize("bad_path", ["", 5, None, ["./dev/a.png"]])
def test_cirr_image_split_paths_must_be_text(tmp_path, bad_path):
    root = write_cirr_annotations(tmp_path, [small_record()], {**SMALL_RELPATHS, "a": bad_path})
    with pytest.raises(ValueError, match="split.rc2.val.json: image 'a' has path .*; expected a relative file path"):
        read_cirr(root, "val", check_images=False)


def test_cirr_with_no_queries_or_repeated_pairids_is_refused(tmp_path):
    root = write_cirr_annotations(tmp_path, [], SMALL_RELPATHS)
    with pytest.raises(ValueError, match="cap.rc2.val.json holds no queries"):
        read_cirr(root, "val", check_images=False)
    records = [small_record(3), small_record(4), small_record(3, reference="c"), small_record(4, reference="d")]
    write_cirr_annotations(tmp_path, records, SMALL_RELPATHS)
    with pytest.raises(ValueError, match="pairids must be unique; 2 appear more than once \\(3, 4\\)"):
        read_cirr(root, "val", check_images=False)


def test_cirr_reader_fuzz_gives_one_line_errors(tmp_path, capsys):
    """Seeded random corruptions of the annotation files: `cir eval cirr` reads them and stops with one
    line and exit code 2 (a readable corruption reaches the model, which is missing here)."""
    from cir_core.cli import main

    rng = random.Random(22)
    records = [small_record(pairid, reference=ref, target_hard=target)
               for pairid, (ref, target) in enumerate([("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")])]
    junk = [None, True, -1, 1.5, "", "zz", [], ["a"], {}, {"a": 1}, float("nan")]
    for trial in range(60):
        root = tmp_path / f"trial{trial}"
        for name, relpath in SMALL_RELPATHS.items():
            write_png(root / relpath, seed=ord(name))
        data_records, relpaths = json.loads(json.dumps(records)), dict(SMALL_RELPATHS)
        how = rng.choice(["field", "member", "relpath", "bytes", "truncate"])
        if how == "field":
            record = rng.choice(data_records)
            record[rng.choice(sorted(record))] = rng.choice(junk)
        elif how == "member":
            rng.choice(data_records)["img_set"]["members"][rng.randrange(4)] = rng.choice(junk)
        elif how == "relpath":
            relpaths[rng.choice(sorted(relpaths))] = rng.choice(junk)
        write_cirr_annotations(root, data_records, relpaths)
        captions = root / "cirr" / "captions" / "cap.rc2.val.json"
        if how in ("bytes", "truncate"):
            corrupt_file(captions, rng, truncate=how == "truncate")
        code = main(["eval", "cirr", "--data-root", str(root), "--model", "local-dir:/nowhere", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (how, err)


@needs_real_files
def test_test1_has_no_targets_and_cannot_be_scored(tmp_path):
    split = read_cirr(make_cirr_standin(tmp_path, query_sets=1, gallery_size=6, split="test1"), "test1")
    assert split.triplets and all(t.target is None for t in split.triplets)
    assert all("target_soft" not in t.extras and len(t.extras["members"]) == 6 for t in split.triplets)
    with pytest.raises(ValueError, match="no targets"):
        cirr_report_from_scores(torch.zeros(len(split), len(split.gallery)), split)


# ------------------------------------------------------------------ protocol on hand-worked rankings
def hand_split() -> TripletSplit:
    gallery = list("abcdefg")
    queries = [  # (reference, target, members)
        ("a", "c", "abcd"), ("b", "a", "abef"), ("g", "d", "defg"), ("c", "e", "ceab"),
    ]
    triplets = [Triplet(pairid=100 + i, reference=r, target=t, caption="x", extras={"members": list(m)})
                for i, (r, t, m) in enumerate(queries)]
    return TripletSplit(name="hand", triplets=triplets, image_paths={}, gallery=gallery)


HAND_SCORES = torch.tensor([
    #  a     b     c     d     e     f     g
    [0.90, 0.80, 0.70, 0.10, 0.75, 0.20, 0.30],  # ref a out: b e [c] ...       subset {b,c,d}: b [c] d
    [0.50, 0.99, 0.10, 0.20, 0.30, 0.40, 0.60],  # ref b out: g [a] f ...       subset {a,e,f}: [a] f e
    [0.05, 0.90, 0.80, 0.02, 0.60, 0.50, 0.95],  # ref g out: b c e f a [d]     subset {d,e,f}: e f [d]
    [0.10, 0.20, 1.00, 0.30, 0.90, 0.40, 0.50],  # ref c out: [e] g f ...       subset {e,a,b}: [e] b a
])


def test_cirr_metrics_match_hand_worked_ranks():
    # Global ranks (0-based, reference excluded): 2, 1, 5, 0. Subset ranks: 1, 0, 2, 0.
    report = cirr_report_from_scores(HAND_SCORES, hand_split())
    assert report.recall == {"R@1": 25.0, "R@5": 75.0, "R@10": 100.0, "R@50": 100.0}
    assert report.recall_subset == {"Rsubset@1": 50.0, "Rsubset@2": 75.0, "Rsubset@3": 100.0}
    assert report.average == (75.0 + 50.0) / 2
    assert report.num_queries == 4 and report.to_dict()["recall_subset"]["Rsubset@2"] == 75.0


def test_reference_is_excluded_from_the_ranking():
    split = hand_split()
    scores = HAND_SCORES.clone()
    scores[1] = torch.tensor([0.50, 0.99, 0.10, 0.20, 0.30, 0.40, 0.45])  # only the reference beats the target
    report = cirr_report_from_scores(scores, split)
    assert report.recall["R@1"] == 50.0  # queries 2 and 4 first once the reference is removed
    split.exclude_reference = False  # the CIRR protocol excludes regardless of the split flag
    assert cirr_report_from_scores(scores, split).recall["R@1"] == 50.0


def test_predictions_by_hand():
    recall, subset = cirr_predictions(HAND_SCORES, hand_split(), top=3, subset_top=2)
    assert list(recall) == ["100", "101", "102", "103"]
    assert recall["100"] == ["b", "e", "c"] and subset["100"] == ["b", "c"]
    assert recall["102"] == ["b", "c", "e"] and subset["102"] == ["e", "f"]
    assert recall["101"] == ["g", "a", "f"] and subset["101"] == ["a", "f"]
    with pytest.raises(ValueError, match="only 6 gallery candidates"):
        cirr_predictions(HAND_SCORES, hand_split(), top=50)


def test_submission_refuses_repeated_pairids_and_no_queries(tmp_path):
    split = hand_split()
    split.triplets[2].pairid = split.triplets[0].pairid
    with pytest.raises(ValueError, match="hand: pairids must be unique; 100 appear more than once"):
        cirr_predictions(HAND_SCORES, split, top=3, subset_top=2)
    features = RetrievalFeatures("hand", split.gallery, torch.zeros(7, 1, 2), [str(t.pairid) for t in split.triplets],
                                 torch.zeros(4, 2))
    with pytest.raises(ValueError, match="pairids must be unique"):
        write_cirr_submission(None, split, tmp_path / "out", features=features)
    empty = TripletSplit(name="empty", triplets=[], image_paths={}, gallery=split.gallery)
    with pytest.raises(ValueError, match="empty has no queries; there is nothing to submit"):
        write_cirr_submission(None, empty, tmp_path / "out", features=features)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ features, model end to end
def direct_scores(model: SPRCModel, split: TripletSplit) -> torch.Tensor:
    """Independent reference: every image and query in one call, no loader, no chunking."""
    transform = ImageTransform(model.config.preprocess)
    pixels = {i: transform(Image.open(split.path(i))) for i in split.gallery}
    targets = model.encode_target(torch.stack([pixels[i] for i in split.gallery]))
    references = torch.stack([pixels[t.reference] for t in split.triplets])
    return model.score(model.encode_query(references, [t.caption for t in split.triplets]).query, targets)


@needs_real_files
def test_evaluate_cirr_equals_a_direct_ranking(tmp_path, tiny_model):
    split = read_cirr(make_cirr_standin(tmp_path, query_sets=2, gallery_size=20), "val")
    features = compute_features(tiny_model, split, batch_size=5, progress=False)
    reference = direct_scores(tiny_model, split)
    assert torch.allclose(score_in_chunks(features.queries, features.gallery_targets), reference, atol=1e-5)
    report = evaluate_cirr(None, split, features=features)
    ranks, subset_ranks = [], []
    for row, t in zip(reference.tolist(), split.triplets):
        order = sorted((i for i in range(len(split.gallery)) if split.gallery[i] != t.reference), key=lambda i: -row[i])
        names = [split.gallery[i] for i in order]
        ranks.append(names.index(t.target))
        subset_ranks.append([n for n in names if n in t.extras["members"]].index(t.target))
    expected = {k: 100.0 * sum(r < k for r in ranks) / len(ranks) for k in (1, 5, 10, 50)}
    assert report.recall == pytest.approx({f"R@{k}": v for k, v in expected.items()})
    assert report.recall_subset["Rsubset@1"] == pytest.approx(100.0 * sum(r < 1 for r in subset_ranks) / len(ranks))


@needs_real_files
def test_reference_cache_and_chunking_do_not_change_scores(tmp_path, tiny_model):
    split = read_cirr(make_cirr_standin(tmp_path, query_sets=1, gallery_size=12), "val")
    plain = compute_features(tiny_model, split, batch_size=4, progress=False)
    cached = compute_features(tiny_model, split, batch_size=3, progress=False, cache_reference_features=True)
    assert torch.allclose(plain.queries, cached.queries, atol=1e-6)
    whole = SPRCModel.score(plain.queries, plain.gallery_targets)
    assert torch.allclose(score_in_chunks(plain.queries, plain.gallery_targets, query_chunk=2, gallery_chunk=5), whole)


@needs_real_files
@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_cached_features_give_the_same_report(tmp_path, tiny_model, suffix):
    split = read_cirr(make_cirr_standin(tmp_path / "data", query_sets=1, gallery_size=10), "val")
    features = compute_features(tiny_model, split, progress=False)
    path = features.save(tmp_path / f"features{suffix}")
    loaded = RetrievalFeatures.load(path)
    assert loaded.gallery_ids == split.gallery and loaded.pairids == [str(t.pairid) for t in split.triplets]
    assert evaluate_cirr(None, split, features=loaded) == evaluate_cirr(None, split, features=features)
    assert torch.equal(loaded.queries, features.queries)
    assert torch.equal(loaded.gallery_targets, features.gallery_targets)
    split.triplets = split.triplets[:-1]
    with pytest.raises(ValueError, match="differ from"):
        evaluate_cirr(None, split, features=loaded)


def test_bad_feature_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RetrievalFeatures.load(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a feature file"):
        RetrievalFeatures.load(tmp_path / "bad.pt")
    features = RetrievalFeatures("s", ["a"], torch.zeros(1, 2, 3), ["1"], torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"must end in \.pt or \.npz"):
        features.save(tmp_path / "features.json")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt is not a feature file .*it holds a list, not a dict"):
        RetrievalFeatures.load(tmp_path / "list.pt")
    torch.save({"split": "s", "gallery_ids": ["a"], "gallery_targets": [[0.0]], "pairids": ["1"],
                "queries": torch.zeros(1, 3)}, tmp_path / "fields.pt")
    with pytest.raises(ValueError, match="fields.pt is not a feature file .*gallery_targets is a list"):
        RetrievalFeatures.load(tmp_path / "fields.pt")


@needs_real_files
def test_submission_files_follow_the_server_format(tmp_path, tiny_model):
    split = read_cirr(make_cirr_standin(tmp_path / "data", query_sets=2, gallery_size=54, split="test1"), "test1")
    features = compute_features(tiny_model, split, batch_size=64, progress=False)
    submission = write_cirr_submission(None, split, tmp_path / "out", name="tiny", features=features)
    assert submission.recall_file.name == "recall_submission_tiny.json"
    assert submission.recall_subset_file.name == "recall_subset_submission_tiny.json"
    recall = json.loads(submission.recall_file.read_text())
    subset = json.loads(submission.recall_subset_file.read_text())
    assert (recall.pop("version"), recall.pop("metric")) == ("rc2", "recall")
    assert (subset.pop("version"), subset.pop("metric")) == ("rc2", "recall_subset")
    assert set(recall) == set(subset) == {str(t.pairid) for t in split.triplets}
    scores = SPRCModel.score(features.queries, features.gallery_targets)
    for row, triplet in enumerate(split.triplets):
        names, subset_names = recall[str(triplet.pairid)], subset[str(triplet.pairid)]
        assert len(names) == len(set(names)) == 50 and len(subset_names) == 3
        assert triplet.reference not in names and triplet.reference not in subset_names
        assert set(names) <= set(split.gallery)  # image names, not paths
        assert set(subset_names) <= set(triplet.extras["members"])
        row_scores = scores[row].clone()
        row_scores[split.gallery.index(triplet.reference)] = float("-inf")
        assert names[0] == split.gallery[int(row_scores.argmax())]
        assert [float(row_scores[split.gallery.index(n)]) for n in names] == sorted(
            (float(row_scores[split.gallery.index(n)]) for n in names), reverse=True)


@needs_real_files
def test_submission_needs_fifty_candidates(tmp_path, tiny_model):
    split = read_cirr(make_cirr_standin(tmp_path / "data", query_sets=1, gallery_size=10, split="test1"), "test1")
    with pytest.raises(ValueError, match="the server expects 50"):
        write_cirr_submission(tiny_model, split, tmp_path / "out", batch_size=64, progress=False)
    with pytest.raises(ValueError, match="submission name"):
        write_cirr_submission(tiny_model, split, tmp_path / "out", name="a/b", progress=False)


def test_official_cirr_recipe_config():
    from cir_core.train_config import TrainConfig

    config = TrainConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / "sprc_cirr.json")
    assert (config.data.kind, config.batch_size, config.optim.lr) == ("cirr", 128, 1e-5)
    assert (tuple(config.optim.betas), config.optim.eps, config.optim.weight_decay) == ((0.9, 0.98), 1e-7, 0.05)
    steps_per_epoch = 28225 // 128  # rc2 train triplets, drop_last
    assert config.max_steps == 50 * steps_per_epoch and config.eval_every == steps_per_epoch
    assert config.optim.pct_start == pytest.approx(1.5 / 50) and config.optim.freeze_vision
    assert config.model.overrides == {"loss.itc_weight": 1.0, "loss.rtc_weight": 0.4, "loss.align_weight": 0.4}
