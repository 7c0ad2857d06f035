"""The app's default: the embedded scenes3d model, its shipped test split, index seed and examples."""
import json
from pathlib import Path

import pytest
import torch

from cir_core.checkpoints import load_model, weights_fingerprint
from cir_core.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "scenes3d-mini"
SHIPPED_SPLIT = ROOT / "assets" / "scenes3d"
EXAMPLES = ROOT / "assets" / "examples" / "scenes3d.json"
MAX_MODEL_BYTES = 80 * 2**20
MAX_SPLIT_BYTES = 40 * 2**20

pytestmark = pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(),
                                reason="the embedded scenes3d model is not in this checkout")


@pytest.fixture(scope="module")
def model():
    return load_model(f"local-dir:{CHECKPOINT}")


def test_the_checkpoint_fits_its_budget_and_its_card_is_its_measured_file(model):
    assert (CHECKPOINT / "model.safetensors").stat().st_size <= MAX_MODEL_BYTES
    assert model.config.name == "scenes3d-mini" and model.config.query_mode == "sprc"
    training = json.loads((CHECKPOINT / "training.json").read_text())
    card = (CHECKPOINT / "README.md").read_text()
    test = training["test"]
    assert f"| all | {test['num_queries']} | {test['recall']['R@1']:.1f} | {test['recall']['R@5']:.1f} |" in card
    assert f"| view angle | {test['per_group']['view angle']['queries']} |" in card
    assert training["run"]["started"]["code_commit"] in card
    # one home for the figures: the README and the benchmark card link to the model card
    for page in (ROOT / "README.md", ROOT / "docs" / "scenes3d.md"):
        text = page.read_text()
        assert "checkpoints/scenes3d-mini/README.md" in text
        assert f"{test['recall']['R@1']:.1f}" not in text
    recipe = TrainConfig.from_file(ROOT / "configs" / "scenes3d_mini.json").to_dict()
    shipped = TrainConfig.from_file(CHECKPOINT / "train_config.json").to_dict()
    where = {"out_dir": None, "device": None, "progress": None}
    assert {**shipped, **where} == {**recipe, **where}


def test_the_shipped_test_split_is_the_fresh_seed_and_within_budget():
    info = json.loads((SHIPPED_SPLIT / "info.json").read_text())
    assert info["benchmark"] == "scenes3d" and info["seed"] == 4242 and list(info["splits"]) == ["test"]
    assert sum(p.stat().st_size for p in SHIPPED_SPLIT.rglob("*") if p.is_file()) <= MAX_SPLIT_BYTES
    training = json.loads((CHECKPOINT / "training.json").read_text())
    from cir_core.data.folders import data_fingerprint

    assert training["test_data_sha256"] == data_fingerprint(SHIPPED_SPLIT)


def test_the_index_seed_holds_this_models_vectors_of_the_shipped_gallery(model):
    import numpy as np

    with np.load(CHECKPOINT / "gallery_index_seed.npz") as seed:
        meta = json.loads(str(seed["meta"]))
        ids = seed["ids"].tolist()
    gallery = json.loads((SHIPPED_SPLIT / "gallery_test.json").read_text())
    assert meta["fingerprint"] == weights_fingerprint(model) and sorted(ids) == sorted(gallery)


def test_the_examples_show_view_angle_queries_that_succeed_and_fail():
    from cir_core.data.registry import open_source

    source = open_source("scenes3d", SHIPPED_SPLIT)
    queries = {str(q.pairid): q for q in source.queries}
    entries = json.loads(EXAMPLES.read_text())["queries"]
    for entry in entries:
        query = queries[str(entry["pairid"])]
        assert (query.reference, query.target, query.caption) == (entry["reference"], entry["target"], entry["caption"])
    view_angle = [e for e in entries if "view angle" in e["groups"]]
    assert {e["target_rank"] == 1 for e in view_angle} == {True, False}
    assert entries[0] in view_angle


def test_the_default_model_finds_targets_on_a_slice_of_the_shipped_split(model):
    """60 test queries against a 400-image slice of the shipped gallery: far above chance
    (R@5 of a random ranking: 1.25%); the card has the whole split."""
    from cir_core.evaluation.scenes3d import evaluate_scenes3d, read_scenes3d_for_eval

    split, views = read_scenes3d_for_eval(SHIPPED_SPLIT, "test")
    split.triplets = split.triplets[:60]
    needed = {image for t in split.triplets for image in (t.reference, t.target)}
    split.gallery = sorted(needed | set(split.gallery[:400 - len(needed)]))
    torch.manual_seed(0)
    summary = evaluate_scenes3d(model.float(), split, views, progress=False, prompt=False).summary
    assert summary["recall"]["R@5"] >= 50.0, summary["recall"]
