"""Index seeds: shipped gallery vectors stand for encoding only for the model and gallery they come from."""
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cir_core.checkpoints import load_model, weights_fingerprint
from cir_core.data.registry import open_source
from cir_core.index import GalleryIndex
from cir_core.index_seed import export_seed, open_seed
from tiny_gallery import tiny_engine, write_image_sensitive_checkpoint, write_tiny_shapes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SEED = ROOT / "checkpoints" / "shapes-mini" / "gallery_index_seed.npz"


def read_seed(path):
    """(vectors, ids, meta) of a seed file, as a start reads them."""
    seed = open_seed(path)
    return seed.vectors(), seed.ids, seed.meta


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


# ---------------------------------------------------------------------- damaged or hostile seeds
def _seed_with_meta(seed: Path, path: Path, edit) -> Path:
    vectors, ids, meta = read_seed(seed)
    edit(meta)
    with open(path, "wb") as handle:
        np.savez(handle, vectors=vectors, ids=np.array(ids), meta=np.array(json.dumps(meta)))
    return path


def test_a_seed_whose_precision_is_a_path_writes_nothing_outside_the_cache(setup, tmp_path, caplog):
    root, checkpoint, shapes, built, seed = setup
    hostile = _seed_with_meta(seed, tmp_path / "hostile.npz", lambda meta: meta.update(precision="../../../escaped"))
    cache = tmp_path / "run" / "cache"
    with caplog.at_level(logging.WARNING, logger="cir_core.index_seed"):
        engine = tiny_engine(checkpoint, shapes, cache, index_seed=hostile)
    assert "precision '../../../escaped' is not one of fp32, bf16, int8" in caplog.text
    assert "stored_as" not in engine.index.info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.npz", "run"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["cache"]


@pytest.mark.parametrize("edit, problem", [
    (lambda meta: meta.pop("precision"), "precision None"),
    (lambda meta: meta.update(sizes=5), "sizes must be a list"),
    (lambda meta: meta.update(sizes=meta["sizes"][:-1]), "sizes must be a list"),
    (lambda meta: meta.update(sizes=[["96", 96]] * len(meta["sizes"])), "is not [width, height]"),
    (lambda meta: meta.update(format=True), "format True"),
    (lambda meta: meta.update(fingerprint=["21e388cf"]), "is not a hexadecimal weights fingerprint"),
    (lambda meta: meta.update(model_config={"name": 1}), "is not a model name"),
])
def test_a_seed_with_damaged_metadata_gives_a_log_line_and_the_gallery_is_encoded(setup, tmp_path, caplog, edit,
                                                                                   problem):
    root, checkpoint, shapes, built, seed = setup
    damaged = _seed_with_meta(seed, tmp_path / "damaged.npz", edit)
    with caplog.at_level(logging.WARNING, logger="cir_core.index_seed"):
        engine = tiny_engine(checkpoint, shapes, tmp_path / "cache", index_seed=damaged)
    assert problem in caplog.text and "encoding the gallery" in caplog.text
    assert "stored_as" not in engine.index.info and engine.gallery_ids == built.gallery_ids


def _npy_header(dtype: str, shape: tuple) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("layout", ["stored", "deflated"])
def test_sizes_a_seed_declares_are_checked_before_anything_is_allocated(setup, tmp_path, layout):
    import tracemalloc
    import zipfile

    from cir_core.index_seed import SeedError, open_seed

    root, checkpoint, shapes, built, seed = setup
    vectors, ids, _ = read_seed(seed)
    declared = 1 << 26  # characters of metadata (256 MB), against a file of well under 1 MB
    hostile = tmp_path / "hostile.npz"
    with zipfile.ZipFile(seed) as source, zipfile.ZipFile(hostile, "w") as archive:
        for name in ("vectors.npy", "ids.npy"):
            archive.writestr(name, source.read(name))
        member = _npy_header(f"<U{declared}", ()) + b"{}" * 64
        if layout == "deflated":
            member = _npy_header(f"<U{declared}", ()) + bytes(4 * declared // 64)
        archive.writestr("meta.npy", member,
                         compress_type=zipfile.ZIP_DEFLATED if layout == "deflated" else zipfile.ZIP_STORED)
    assert hostile.stat().st_size < seed.stat().st_size + (1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(SeedError, match="is not an index seed"):
            open_seed(hostile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_a_git_lfs_pointer_in_place_of_the_seed_says_so_in_one_line(setup, tmp_path, caplog):
    root, checkpoint, shapes, built, seed = setup
    pointer = tmp_path / "gallery_index_seed.npz"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n"
                       "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 21896192\n")
    with caplog.at_level(logging.WARNING, logger="cir_core.index_seed"):
        engine = tiny_engine(checkpoint, shapes, tmp_path / "cache", index_seed=pointer)
    lines = [record.getMessage() for record in caplog.records if record.name == "cir_core.index_seed"]
    assert len(lines) == 1 and "Git LFS pointer" in lines[0] and "\n" not in lines[0]
    assert "allow_pickle" not in caplog.text and engine.gallery_ids == built.gallery_ids


# ---------------------------------------------------------------------- where --export-seed may write
def _export(setup, tmp_path, target, *extra):
    from cir_core.cli import main

    root, checkpoint, shapes, built, _ = setup
    return main(["build-index", "--data", str(shapes), "--model", f"local-dir:{checkpoint}", "--out",
                 str(tmp_path / "index"), "--no-progress", "--export-seed", str(target), *extra])


def test_export_seed_refuses_to_replace_other_files_before_building(setup, tmp_path, capsys):
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    config.write_text('{"name": "a model"}')
    link = tmp_path / "link.npz"
    link.symlink_to(config)
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    cases = [(config, (), "exists and is not an index seed"), (link, (), "is a symbolic link"),
             (fifo, (), "is a device, FIFO or socket"), (fifo, ("--overwrite",), "is a device, FIFO or socket"),
             (folder, ("--overwrite",), "is a folder"), (tmp_path / "index" / "info.json", (), "inside the index"),
             (tmp_path / "index", ("--overwrite",), "inside the index"),
             (config / "seed.npz", (), "Not a directory")]
    for target, extra, message in cases:
        assert _export(setup, tmp_path, target, *extra) == 2, target
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, (target, error)
        assert not (tmp_path / "index").exists()  # refused before the build
    assert config.read_text() == '{"name": "a model"}' and link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo.npz", "folder.npz", "link.npz", "model"]


def test_export_seed_replaces_an_earlier_seed_and_other_files_only_when_told(setup, tmp_path):
    root, checkpoint, shapes, built, seed = setup
    earlier = tmp_path / "earlier.npz"
    earlier.write_bytes(_seed_with_meta(seed, tmp_path / "old.npz", lambda meta: meta.update(precision="int8"))
                        .read_bytes())
    assert _export(setup, tmp_path, earlier) == 0 and read_seed(earlier)[2]["precision"] == "fp32"
    notes = tmp_path / "notes.npz"
    notes.write_text("my notes")
    assert _export(setup, tmp_path, notes, "--overwrite") == 0 and read_seed(notes)[1] == built.gallery_ids
    target = tmp_path / "kept.txt"
    target.write_text("kept")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    assert _export(setup, tmp_path, link, "--overwrite") == 0
    assert not link.is_symlink() and target.read_text() == "kept" and read_seed(link)[1] == built.gallery_ids
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_start_finding_another_writing_the_seeded_index_waits_for_it(setup, tmp_path, monkeypatch, caplog):
    import threading

    import cir_core.index_cache as index_cache
    from cir_core.index_build import destination_lock
    from cir_core.index_cache import GalleryKey

    root, checkpoint, shapes, built, seed = setup
    source = open_source("shapes", shapes)
    key = GalleryKey.of(built.model, source.gallery_items(), source.name)
    folder = tmp_path / "cache" / "indexes" / key.folder_name(read_seed(seed)[2]["precision"])
    held, waiting = threading.Event(), threading.Event()
    real_wait = index_cache.wait_for_build
    monkeypatch.setattr(index_cache, "wait_for_build", lambda *args: waiting.set() or real_wait(*args))

    def other_start():  # holds the destination as a start writing it would, until the second one waits
        with destination_lock(folder):
            held.set()
            waiting.wait(30)

    other = threading.Thread(target=other_start)
    other.start()
    assert held.wait(30)
    with caplog.at_level(logging.INFO, logger="cir_core.index_cache"):
        engine = tiny_engine(checkpoint, shapes, tmp_path / "cache", index_seed=seed)
    other.join(30)
    assert "waiting for it" in caplog.text and engine.index.info["stored_as"] == "float16 seed"
