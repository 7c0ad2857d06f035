"""FashionIQ: the reader on the real annotation files, caption joining, the protocol on
hand-worked rankings and end to end with the tiny model on stand-in images."""
import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from cir_core.data.fashioniq import FASHIONIQ_CATEGORIES, caption_variants, join_captions, read_fashioniq
from cir_core.data.triplets import Triplet, TripletSplit
from cir_core.evaluation.fashioniq import evaluate_fashioniq, fashioniq_recall_from_scores, fashioniq_report
from cir_core.transforms import ImageTransform
from fuzzing import corrupt_file

SHARED_DATA = Path(os.environ.get("CIR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FASHIONIQ_ROOT = SHARED_DATA / "fashioniq"
needs_real_files = pytest.mark.skipif(not (FASHIONIQ_ROOT / "captions").is_dir(),
                                      reason=f"real FashionIQ annotations not found under {FASHIONIQ_ROOT}")


def real_fashioniq(kind: str, category: str, split: str = "val"):
    name = f"cap.{category}.{split}.json" if kind == "captions" else f"split.{category}.{split}.json"
    return json.loads((FASHIONIQ_ROOT / kind / name).read_text())


def write_png(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    image = Image.new("RGB", (8, 8))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64)])
    image.save(path)


def make_fashioniq_standin(root: Path, categories=("dress",), queries: int = 6, gallery_size: int = 12) -> Path:
    """An official-layout fashionIQ_dataset folder: the first real val records of each category,
    a gallery of their images plus further real ids, tiny PNGs (every third one saved as .jpg)."""
    for kind in ("captions", "image_splits", "images"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    seed = 0
    for category in categories:
        records = real_fashioniq("captions", category)[:queries]
        ids = list(dict.fromkeys(i for r in records for i in (r["candidate"], r["target"])))
        ids += [i for i in real_fashioniq("image_splits", category) if i not in ids][:max(0, gallery_size - len(ids))]
        (root / "captions" / f"cap.{category}.val.json").write_text(json.dumps(records))
        (root / "image_splits" / f"split.{category}.val.json").write_text(json.dumps(ids))
        for image_id in ids:
            seed += 1
            write_png(root / "images" / f"{image_id}.{'jpg' if seed % 3 == 0 else 'png'}", seed)
    return root


def touch_images(folder: Path, ids, extension_of=lambda index: ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image_id in enumerate(ids):
        (folder / f"{image_id}{extension_of(index)}").touch()


# ------------------------------------------------------------------ captions
def test_captions_join_as_the_official_code():
    assert join_captions("is darker.", " has a collar?") == "is darker and has a collar"
    assert join_captions("Is shorter, ", "red") == "Is shorter and red"
    assert caption_variants("is darker.", "has a collar") == (
        "is darker and has a collar", "has a collar and is darker", "is darker", "has a collar")
    triplet = Triplet(pairid=0, reference="a", caption="x", caption_variants=caption_variants("c1", "c2"))
    drawn = {triplet.training_caption(random.Random(seed)) for seed in range(60)}
    assert drawn == {"c1 and c2", "c2 and c1", "c1", "c2"}


# ------------------------------------------------------------------ reader on the real files
@needs_real_files
@pytest.mark.parametrize("category", FASHIONIQ_CATEGORIES)
@pytest.mark.parametrize("split_name", ["train", "val"])
def test_reader_parses_every_real_record(category, split_name):
    records = real_fashioniq("captions", category, split_name)
    gallery = real_fashioniq("image_splits", category, split_name)
    split = read_fashioniq(FASHIONIQ_ROOT, category, split_name, check_images=False)
    assert split.name == f"fashioniq-{category}/{split_name}" and not split.exclude_reference
    assert len(split) == len(records) and split.gallery == gallery
    for index in (0, len(records) // 2, len(records) - 1):
        triplet, record = split.triplets[index], records[index]
        assert (triplet.pairid, triplet.reference, triplet.target, triplet.edit) == (
            index, record["candidate"], record["target"], category)
        assert triplet.caption == join_captions(*record["captions"])
        assert triplet.caption_variants == caption_variants(*record["captions"])
    assert sum(t.caption.count(" and ") >= 1 for t in split.triplets) == len(records)


@needs_real_files
def test_images_resolve_to_png_or_jpg(tmp_path):
    records, gallery = real_fashioniq("captions", "dress"), real_fashioniq("image_splits", "dress")
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    for kind, data in (("captions", records), ("image_splits", gallery)):
        name = f"{'cap' if kind == 'captions' else 'split'}.dress.val.json"
        (tmp_path / kind / name).write_text(json.dumps(data))
    touch_images(tmp_path / "images", gallery, lambda index: ".jpg" if index % 2 else ".png")
    split = read_fashioniq(tmp_path, "dress", "val")
    assert len(split) == 2017 and len(split.gallery) == 3817
    assert split.path(gallery[0]) == tmp_path / "images" / f"{gallery[0]}.png"
    assert split.path(gallery[1]) == tmp_path / "images" / f"{gallery[1]}.jpg"
    (tmp_path / "images" / f"{gallery[1]}.jpg").unlink()
    (tmp_path / "images" / f"{gallery[4]}.png").unlink()
    with pytest.raises(FileNotFoundError) as error:
        read_fashioniq(tmp_path, "dress", "val")
    message = str(error.value)
    assert "2 of 3817 images listed in image_splits/split.dress.val.json" in message
    assert f"missing under {tmp_path / 'images'}" in message and f"first: {gallery[1]}" in message


def test_bad_input_is_reported(tmp_path):
    with pytest.raises(ValueError, match="unknown FashionIQ category 'skirt'"):
        read_fashioniq(tmp_path, "skirt", "val")
    with pytest.raises(FileNotFoundError, match=r"cap\.dress\.val\.json is missing"):
        read_fashioniq(tmp_path, "dress", "val")
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    (tmp_path / "image_splits" / "split.dress.val.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "captions" / "cap.dress.val.json").write_text(json.dumps([{"candidate": "a", "target": "b",
                                                                            "captions": ["only one"]}]))
    with pytest.raises(ValueError, match="record 0 must have exactly two caption strings"):
        read_fashioniq(tmp_path, "dress", "val", check_images=False)
    (tmp_path / "captions" / "cap.dress.val.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_fashioniq(tmp_path, "dress", "val", check_images=False)


def write_fashioniq_annotations(root: Path, records, gallery, category: str = "dress") -> Path:
    for kind, data in (("captions", records), ("image_splits", gallery)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        name = f"cap.{category}.val.json" if kind == "captions" else f"split.{category}.val.json"
        (root / kind / name).write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("record, message", [
    ({"candidate": ["a"], "target": "b", "captions": ["x", "y"]},
     r"record 0 has candidate \['a'\]; expected an image id"),
    ({"candidate": None, "target": "b", "captions": ["x", "y"]}, "record 0 has candidate None; expected an image id"),
    ({"candidate": "a", "target": 7, "captions": ["x", "y"]}, "record 0 has target 7; expected an image id"),
    ({"candidate": "a", "target": "a", "captions": ["x", "y"]}, "record 0 has its candidate 'a' as its target"),
])
def test_fashioniq_records_with_bad_ids_are_refused(tmp_path, record, message):
    write_fashioniq_annotations(tmp_path, [record], ["a", "b"])
    with pytest.raises(ValueError, match=message):
        read_fashioniq(tmp_path, "dress", "val", check_images=False)


def test_fashioniq_repeated_gallery_ids_and_no_queries_are_refused(tmp_path):
    write_fashioniq_annotations(tmp_path, [{"candidate": "a", "target": "b", "captions": ["x", "y"]}], ["a", "b", "a"])
    with pytest.raises(ValueError, match=r"split\.dress\.val\.json: image ids must be unique; 1 appear more than once"):
        read_fashioniq(tmp_path, "dress", "val", check_images=False)
    write_fashioniq_annotations(tmp_path, [], ["a", "b"])
    with pytest.raises(ValueError, match=r"cap\.dress\.val\.json holds no queries"):
        read_fashioniq(tmp_path, "dress", "val", check_images=False)


def test_fashioniq_reader_fuzz_gives_one_line_errors(tmp_path, capsys):
    """Seeded random corruptions of the annotation files: `cir eval fashioniq` stops with one line
    and exit code 2 (a readable corruption reaches the model, which is missing here)."""
    from cir_core.cli import main

    rng = random.Random(22)
    ids = ["a", "b", "c", "d"]
    records = [{"candidate": ids[i], "target": ids[(i + 1) % 4], "captions": ["is red", "has dots"]} for i in range(4)]
    junk = [None, True, -1, 1.5, "", [], ["a"], {}, {"a": 1}, ["x"], ["x", "y", "z"]]
    for trial in range(60):
        root = tmp_path / f"trial{trial}"
        data_records, gallery = json.loads(json.dumps(records)), list(ids)
        how = rng.choice(["field", "gallery", "bytes", "truncate"])
        refused = how == "gallery"  # every junk value (and a repeated "a") is an invalid gallery entry
        if how == "field":
            record, value = rng.choice(data_records), rng.choice(junk)
            key = rng.choice(sorted(record))
            record[key] = value
            refused = not (key == "target" and value is None)  # a query without a target is a test query
        elif how == "gallery":
            gallery[rng.randrange(4)] = rng.choice(junk + ["a"])
        write_fashioniq_annotations(root, data_records, gallery)
        touch_images(root / "images", ids)
        captions = root / "captions" / "cap.dress.val.json"
        if how in ("bytes", "truncate"):
            corrupt_file(captions, rng, truncate=how == "truncate")
        code = main(["eval", "fashioniq", "--data-root", str(root), "--categories", "dress",
                     "--model", "local-dir:/nowhere", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (how, err)
        assert not refused or "/nowhere" not in err, (how, err)  # refused by the reader, not accepted


def test_test_split_without_targets(tmp_path):
    for kind in ("captions", "image_splits"):
        (tmp_path / kind).mkdir()
    (tmp_path / "image_splits" / "split.shirt.test.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "captions" / "cap.shirt.test.json").write_text(json.dumps([{"candidate": "a", "captions": ["x", "y"]}]))
    touch_images(tmp_path / "images", ["a", "b"])
    split = read_fashioniq(tmp_path, "shirt", "test")
    assert split.triplets[0].target is None and split.triplets[0].caption == "x and y"
    with pytest.raises(ValueError, match="no targets"):
        fashioniq_recall_from_scores(torch.zeros(1, 2), split)


# ------------------------------------------------------------------ protocol on hand-worked rankings
def ranked_split(queries) -> tuple[TripletSplit, torch.Tensor]:
    """60 gallery images g00..g59 scored so that column j is ranked j-th by every query."""
    gallery = [f"g{j:02d}" for j in range(60)]
    triplets = [Triplet(pairid=i, reference=gallery[r], target=gallery[t], caption="x") for i, (r, t) in enumerate(queries)]
    scores = -torch.arange(60, dtype=torch.float32).expand(len(queries), 60).clone()
    return TripletSplit(name="hand", triplets=triplets, image_paths={}, gallery=gallery, exclude_reference=False), scores


def test_fashioniq_recall_keeps_the_reference():
    # (reference column, target column) = rank of the target; query 4's reference sits above its
    # target and is not removed, so its target stays at rank 10 (a miss at R@10).
    split, scores = ranked_split([(5, 0), (3, 10), (1, 50), (0, 10)])
    assert fashioniq_recall_from_scores(scores, split) == {"R@10": 25.0, "R@50": 75.0}


def test_fashioniq_report_averages_categories():
    report = fashioniq_report({"dress": {"R@10": 25.0, "R@50": 75.0}, "shirt": {"R@10": 50.0, "R@50": 100.0}},
                              {"dress": 4, "shirt": 2})
    assert report.recall == {"R@10": 37.5, "R@50": 87.5}
    assert report.average == 62.5
    assert report.to_dict()["categories"]["shirt"]["R@50"] == 100.0
    with pytest.raises(ValueError, match="no FashionIQ category"):
        fashioniq_report({}, {})


@needs_real_files
def test_evaluate_fashioniq_equals_a_direct_ranking(tmp_path, tiny_model):
    root = make_fashioniq_standin(tmp_path, categories=("dress", "toptee"), queries=4, gallery_size=16)
    splits = {c: read_fashioniq(root, c, "val") for c in ("dress", "toptee")}
    report = evaluate_fashioniq(tiny_model, splits, batch_size=4, progress=False)
    transform = ImageTransform(tiny_model.config.preprocess)
    for category, split in splits.items():
        pixels = {i: transform(Image.open(split.path(i))) for i in split.image_paths}
        targets = tiny_model.encode_target(torch.stack([pixels[i] for i in split.gallery]))
        references = torch.stack([pixels[t.reference] for t in split.triplets])
        queries = tiny_model.encode_query(references, [t.caption for t in split.triplets]).query
        scores = tiny_model.score(queries, targets).tolist()
        ranks = [sorted(split.gallery, key=lambda i: -row[split.gallery.index(i)]).index(t.target)
                 for row, t in zip(scores, split.triplets)]
        assert report.categories[category]["R@10"] == pytest.approx(100.0 * sum(r < 10 for r in ranks) / len(ranks))
        assert report.num_queries[category] == 4
    assert report.average == pytest.approx((report.recall["R@10"] + report.recall["R@50"]) / 2)
    splits["dress"].exclude_reference = True
    with pytest.raises(ValueError, match="keeps the reference"):
        evaluate_fashioniq(tiny_model, splits, progress=False)
    with pytest.raises(TypeError, match="per-category galleries"):
        evaluate_fashioniq(tiny_model, splits["toptee"], progress=False)


@needs_real_files
def test_official_fashioniq_recipe_config():
    from cir_core.train_config import TrainConfig

    config = TrainConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / "sprc_fiq.json")
    from cir_core.data.registry import dataset_spec

    options = dataset_spec(config.data.kind).parse_options(config.data.options)
    assert (config.data.kind, options.categories) == ("fashioniq", FASHIONIQ_CATEGORIES)
    assert (config.batch_size, config.optim.lr, tuple(config.optim.betas), config.optim.eps) == (128, 2e-5, (0.9, 0.98), 1e-7)
    steps_per_epoch = sum(len(real_fashioniq("captions", c, "train")) for c in FASHIONIQ_CATEGORIES) // 128
    assert config.max_steps == 30 * steps_per_epoch and config.eval_every == steps_per_epoch
    assert config.optim.pct_start == pytest.approx(1.5 / 30) and config.optim.weight_decay == 0.05
    assert config.model.overrides == {"loss.itc_weight": 1.0, "loss.rtc_weight": 1.0, "loss.align_weight": 1.0}
