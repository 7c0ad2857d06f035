"""Index seeds: shipped gallery vectors stand for encoding only for the model and gallery they come from."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cir_core.checkpoints import load_model, weights_fingerprint
from cir_core.data.sources import open_source
from cir_core.index import GalleryIndex
from cir_core.index_seed import export_seed, read_seed
from tiny_gallery import tiny_engine, write_image_sensitive_checkpoint, write_tiny_shapes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SEED = ROOT / "checkpoints" / "shapes-mini" / "gallery_index_seed.npz"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    checkpoint = write_image_sensitive_checkpoint(root / "model")
    shapes = write_tiny_shapes(root / "shapes")
    built = tiny_engine(checkpoint, shapes, root / "built-cache")  # encodes the gallery
    seed = export_seed(built.index, root / "seed.npz")
    return root, checkpoint, shapes, built, seed


def test_a_matching_seed_replaces_encoding(setup, monkeypatch, tmp_path):
    root, checkpoint, shapes, built, seed = setup
    import cir_core.index_build as index_build

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the seed should have stood for encoding the gallery")

    monkeypatch.setattr(index_build, "_encode_missing", must_not_encode)
    seeded = tiny_engine(checkpoint, shapes, tmp_path / "fresh-cache", index_seed=seed)
    assert seeded.gallery_ids == built.gallery_ids
    assert np.allclose(seeded.index.vectors(range(len(seeded.index))), built.index.vectors(range(len(built.index))),
                       atol=2e-3)  # fp16 storage
    query = seeded.benchmark_queries()[0]
    assert ([h.id for h in seeded.search(query.reference_id, query.caption, k=5).hits]
            == [h.id for h in built.search(query.reference_id, query.caption, k=5).hits])
    assert seeded.index.info["stored_as"] == "float16 seed" and seeded.index.fingerprint == built.index.fingerprint


def test_a_start_that_finds_its_index_cached_does_not_read_the_seed_vectors(setup, monkeypatch, tmp_path):
    root, checkpoint, shapes, built, seed = setup
    from cir_core.index_seed import SeedFile

    first = tiny_engine(checkpoint, shapes, tmp_path / "cache", index_seed=seed)  # writes the index from the seed

    def must_not_read(self):
        raise AssertionError("the cached index should have been used without reading the seed's vectors")

    monkeypatch.setattr(SeedFile, "vectors", must_not_read)
    again = tiny_engine(checkpoint, shapes, tmp_path / "cache", index_seed=seed)
    assert again.gallery_ids == first.gallery_ids and again.index.info["stored_as"] == "float16 seed"


def test_a_seed_of_other_weights_is_not_used(setup, tmp_path, caplog):
    root, checkpoint, shapes, built, seed = setup
    other = write_image_sensitive_checkpoint(tmp_path / "other", seed=9)
    with caplog.at_level(logging.WARNING, logger="cir_core.index_seed"):
        engine = tiny_engine(other, shapes, tmp_path / "cache", index_seed=seed)
    assert "other weights" in caplog.text
    assert "stored_as" not in engine.index.info and engine.index.fingerprint == weights_fingerprint(engine.model)
    assert not np.allclose(engine.index.vectors([0]), built.index.vectors([0]), atol=1e-3)


def test_a_seed_of_another_gallery_or_a_broken_file_is_not_used(setup, tmp_path, caplog):
    root, checkpoint, shapes, built, seed = setup
    vectors, ids, meta = read_seed(seed)
    shuffled = tmp_path / "shuffled.npz"
    with open(shuffled, "wb") as handle:
        np.savez(handle, vectors=vectors, ids=np.array(ids[::-1]), meta=np.array(json.dumps(meta)))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not an archive")
    for bad, reason in ((shuffled, "another gallery"), (broken, "not an index seed")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cir_core.index_seed"):
            engine = tiny_engine(checkpoint, shapes, tmp_path / f"cache-{bad.stem}", index_seed=bad)
        assert reason in caplog.text and "stored_as" not in engine.index.info


def test_a_seed_whose_vectors_are_damaged_past_a_sound_header_is_not_used(setup, tmp_path, caplog):
    root, checkpoint, shapes, built, seed = setup
    data = bytearray(seed.read_bytes())
    start = data.index(b"vectors.npy") + 200  # inside the stored vector data, after the .npy header
    data[start:start + 64] = bytes(64)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(data))
    from cir_core.index_seed import open_seed

    assert open_seed(damaged).shape == read_seed(seed)[0].shape  # the header still reads
    with caplog.at_level(logging.WARNING, logger="cir_core"):
        engine = tiny_engine(checkpoint, shapes, tmp_path / "cache", index_seed=damaged)
    assert "encoding the gallery" in caplog.text and "stored_as" not in engine.index.info
    assert np.allclose(engine.index.vectors([0]), built.index.vectors([0]), atol=1e-3)


def test_cli_exports_a_seed(setup, tmp_path, capsys):
    from cir_core.cli import main

    root, checkpoint, shapes, built, _ = setup
    out = tmp_path / "seed.npz"
    assert main(["build-index", "--data", str(shapes), "--model", f"local-dir:{checkpoint}", "--out",
                 str(tmp_path / "index"), "--no-progress", "--export-seed", str(out)]) == 0
    vectors, ids, meta = read_seed(out)
    assert ids == GalleryIndex.load(tmp_path / "index").ids and vectors.dtype == np.float16
    assert meta["fingerprint"] == built.index.fingerprint


@pytest.mark.skipif(not SHIPPED_SEED.is_file(), reason="no shipped index seed in this checkout")
def test_the_shipped_seed_belongs_to_the_shipped_model_and_gallery():
    """A retrained default must ship with its own seed (else every fresh start encodes the gallery)."""
    _, ids, meta = read_seed(SHIPPED_SEED)
    model = load_model(f"local-dir:{SHIPPED_SEED.parent}")
    assert meta["fingerprint"] == weights_fingerprint(model), "the seed holds another checkpoint's vectors"
    assert ids == [item.id for item in open_source("shapes", ROOT / "assets" / "shapes").gallery_items()]
