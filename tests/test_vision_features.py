"""Vision features stored at index time: what is stored, validation, and the engine's use of them."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cir_core import index_build
from cir_core.checkpoints import load_model
from cir_core.cli import main
from cir_core.engine import Engine
from cir_core.index import GalleryIndex, GalleryIndexError
from cir_core.index_store import INFO_FILE, VISION_FILE
from cir_core.transforms import ImageTransform
from tiny_gallery import write_image_sensitive_checkpoint

FP16_TOLERANCE = 1e-2  # tiny-test features are layer-normed, about unit size: fp16 keeps ~3 digits
CAPTION = "make the red circle large"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Vision features that differ clearly between images, so a mixed-up row would show."""
    return load_model(f"local-dir:{write_image_sensitive_checkpoint(tmp_path_factory.mktemp('model') / 'tiny')}")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for number in range(7):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"im{number}.png")
    return folder


@pytest.fixture(scope="module")
def stored(model, images, tmp_path_factory):
    items = index_build.items_from_images(images)
    return GalleryIndex.build(model, items, tmp_path_factory.mktemp("idx") / "stored", batch_size=3,
                              progress=False, store_vision_features=True)


@pytest.fixture(scope="module")
def plain(model, images, tmp_path_factory):
    items = index_build.items_from_images(images)
    return GalleryIndex.build(model, items, tmp_path_factory.mktemp("idx") / "plain", batch_size=3, progress=False)


def _recomputed(model, index, row):
    pixels = ImageTransform(model.config.preprocess)(Image.open(index.paths[row]).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        return model.vision_features(pixels)


def test_stored_features_equal_recomputed_ones_within_fp16(model, stored):
    vision = model.config.vision
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    info = json.loads((stored.folder / INFO_FILE).read_text())
    assert info["vision_features"] == {"file": VISION_FILE, "shape": [7, tokens, vision.hidden_size],
                                       "dtype": "float16"}
    assert VISION_FILE in info["files"] and len(info["files"][VISION_FILE]["sha256"]) == 64
    assert stored.has_vision_features
    for row in range(len(stored)):
        features = stored.vision_features(row)
        assert features.dtype == np.float16 and features.shape == (1, tokens, vision.hidden_size)
        np.testing.assert_allclose(features.astype(np.float32), _recomputed(model, stored, row).numpy(),
                                   atol=FP16_TOLERANCE, rtol=FP16_TOLERANCE)
    # Rows differ, so a shifted row would fail above.
    assert not np.allclose(stored.vision_features(0), stored.vision_features(1), atol=0.1)


def test_storing_features_leaves_the_target_vectors_unchanged(stored, plain):
    np.testing.assert_array_equal(stored.vectors(range(7)), plain.vectors(range(7)))
    assert not plain.has_vision_features and plain.vision_features(0) is None


def test_a_resumed_build_stores_the_same_features(model, images, stored, tmp_path, monkeypatch):
    items = index_build.items_from_images(images)
    real, calls = index_build._encode_batch_with_features, []

    def crash(encoder, pixels):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(encoder, pixels)

    monkeypatch.setattr(index_build, "_encode_batch_with_features", crash)
    with pytest.raises(KeyboardInterrupt):
        GalleryIndex.build(model, items, tmp_path / "index", batch_size=3, progress=False, store_vision_features=True)
    monkeypatch.setattr(index_build, "_encode_batch_with_features", real)
    resumed = GalleryIndex.build(model, items, tmp_path / "index", batch_size=3, progress=False,
                                 store_vision_features=True)
    assert resumed.report.resumed_batches == 1
    for row in range(7):
        np.testing.assert_array_equal(resumed.vision_features(row), stored.vision_features(row))


def test_loading_checks_the_stored_shape(model, stored, tmp_path):
    assert GalleryIndex.load(stored.folder, model=model).has_vision_features
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in stored.folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    info = json.loads((copy / INFO_FILE).read_text())
    info["vision_features"]["shape"][2] += 1  # features another model's Q-Former would read
    (copy / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(GalleryIndexError, match="vision features"):
        GalleryIndex.load(copy, model=model)
    with pytest.raises(GalleryIndexError, match=VISION_FILE):  # and the file no longer matches info.json
        GalleryIndex.load(copy)


def test_a_gallery_reference_skips_the_vision_encoder_with_the_same_ranking(model, stored, plain, monkeypatch):
    with_features, without = Engine(model, stored), Engine(model, plain)
    reference = stored.ids[2]
    expected = without.search(reference, CAPTION, k=7)
    assert without.features.misses == 1  # the plain index ran the vision encoder
    assert "vision features stored" in with_features.summary() and "on CPU" in with_features.summary()

    def no_vision_encoder(*args, **kwargs):
        raise AssertionError("the vision encoder ran for a reference whose features are stored")

    monkeypatch.setattr(model, "vision_features", no_vision_encoder)
    result = with_features.search(reference, CAPTION, k=7)
    assert [hit.id for hit in result.hits] == [hit.id for hit in expected.hits]
    np.testing.assert_allclose([hit.score for hit in result.hits], [hit.score for hit in expected.hits], atol=1e-2)
    assert with_features.features.misses == 0


def test_the_cli_stores_features_when_asked(model, images, tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "index"
    assert main(["build-index", "--images", str(images), "--model", f"local-dir:{tiny_checkpoint}", "--out", str(out),
                 "--device", "cpu", "--store-vision-features", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vision_features"]["shape"][0] == 7
    assert (out / VISION_FILE).is_file()
