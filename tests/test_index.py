"""GalleryIndex: exactness against brute force, compressed recall, atomic resumable builds, refusals, CLIs."""
import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

import cir_core
from cir_core import index_benchmark as harness
from cir_core import index_build, index_store
from cir_core.cli import main
from cir_core.index import GalleryIndex, GalleryIndexError, GalleryItem, IndexParams
from cir_core.index_store import FLAT_FILE, HNSW_QUANTIZER_LISTS, INFO_FILE, METADATA_FILE, IndexContents, write_index
from cir_core.transforms import ImageTransform
from fuzzing import corrupt_file
from tiny_gallery import crash_encoding_at_batch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on a shared CPU run far faster on one thread than on a contended pool."""
    previous = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(previous[0])
    faiss.omp_set_num_threads(previous[1])


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _write(folder, vectors, kind="flat", **params):
    """An index over (N, Q, D) vectors with ids img0..img{N-1}, loaded back."""
    n, q, d = vectors.shape
    records = [{"id": f"img{row}", "path": f"/gallery/{row}.png", "caption": f"caption {row}"} for row in range(n)]
    contents = IndexContents(records=records, num_query_tokens=q, dim=d, info={"model": "test", "fingerprint": "f"})
    chunks = [vectors[start:start + 97] for start in range(0, n, 97)]
    write_index(folder, chunks, contents, IndexParams(kind=kind, **params), progress=False)
    return GalleryIndex.load(folder)


def _brute(vectors, query, k, excluded=()):
    """The naive way: one matmul over all N*Q vectors, max per image, ties by lower row."""
    n, q, d = vectors.shape
    scores = (vectors.reshape(n * q, d).astype(np.float64) @ query.astype(np.float64)).reshape(n, q).max(axis=1)
    rows = np.array([row for row in range(n) if row not in excluded], dtype=np.int64)
    order = np.lexsort((rows, -scores[rows]))[:k]
    return rows[order], scores[rows][order]


# ------------------------------------------------------------------------------------------- exact search
def test_flat_search_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((600, 8, 16)))
    index = _write(tmp_path / "index", vectors)
    queries = _unit(rng.standard_normal((15, 16)))
    for query in queries:
        for k in (1, 10, 37):
            hits = index.search(query, k)
            rows, scores = _brute(vectors, query, k)
            assert [hit.row for hit in hits] == rows.tolist()
            np.testing.assert_allclose([hit.score for hit in hits], scores, atol=1e-5)
            assert [hit.id for hit in hits] == [f"img{row}" for row in rows]
    batched = index.search(torch.from_numpy(queries[:3]), 5)
    assert [[hit.row for hit in hits] for hits in batched] == [_brute(vectors, q, 5)[0].tolist() for q in queries[:3]]
    assert batched[0][0].path == f"/gallery/{batched[0][0].row}.png"
    assert batched[0][0].caption == f"caption {batched[0][0].row}"


def test_ties_are_ranked_like_brute_force(tmp_path):
    # Entries in {-0.5, 0, 0.5} make every dot product exact, so equal vectors tie exactly.
    rng = np.random.default_rng(1)
    patterns = rng.integers(-1, 2, (6, 8)).astype(np.float32) * 0.5
    vectors = patterns[rng.integers(0, len(patterns), (400, 4))]  # (400, 4, 8): many images share their best vector
    index = _write(tmp_path / "index", vectors)
    for query in patterns[:4]:
        for k in (10, 60, 150):
            rows, scores = _brute(vectors, query, k)
            assert scores[-1] == _brute(vectors, query, k + 1)[1][-1], "the k-th and (k+1)-th images should tie"
            hits = index.search(query, k)
            assert [hit.row for hit in hits] == rows.tolist()
            assert [hit.score for hit in hits] == scores.tolist()


def test_k_larger_than_gallery_and_exclude(tmp_path):
    rng = np.random.default_rng(2)
    vectors = _unit(rng.standard_normal((30, 4, 8)))
    index = _write(tmp_path / "index", vectors)
    query = _unit(rng.standard_normal(8))
    assert [hit.row for hit in index.search(query, 100)] == _brute(vectors, query, 100)[0].tolist()
    best = index.search(query, 1)[0]
    hits = index.search(query, 100, exclude=[best.id, "not-in-gallery"])
    assert len(hits) == 29 and best.id not in {hit.id for hit in hits}
    assert [hit.row for hit in hits] == _brute(vectors, query, 100, excluded={best.row})[0].tolist()
    # A batch takes one exclusion list per query.
    queries = _unit(rng.standard_normal((2, 8)))
    per_query = index.search(queries, 3, exclude=[["img0", "img1"], ["img2"]])
    assert [hit.row for hit in per_query[0]] == _brute(vectors, queries[0], 3, excluded={0, 1})[0].tolist()
    assert [hit.row for hit in per_query[1]] == _brute(vectors, queries[1], 3, excluded={2})[0].tolist()


def test_exclude_with_the_growing_flat_search(tmp_path):
    rng = np.random.default_rng(3)
    vectors = _unit(rng.standard_normal((800, 8, 16)))
    index = _write(tmp_path / "index", vectors)
    query = _unit(rng.standard_normal(16))
    top = _brute(vectors, query, 30)[0]
    excluded_ids = [f"img{row}" for row in top[:20]]
    hits = index.search(query, 10, exclude=excluded_ids)
    assert [hit.row for hit in hits] == _brute(vectors, query, 10, excluded=set(top[:20].tolist()))[0].tolist()


def test_vectors_and_score_all(tmp_path):
    rng = np.random.default_rng(4)
    vectors = _unit(rng.standard_normal((50, 4, 8)))
    index = _write(tmp_path / "index", vectors)
    np.testing.assert_array_equal(index.vectors([3, 0]), vectors[[3, 0]])
    assert index.vectors(7).shape == (1, 4, 8)
    queries = _unit(rng.standard_normal((3, 8)))
    expected = np.einsum("bd,nqd->bnq", queries, vectors).max(axis=-1)
    np.testing.assert_allclose(index.score_all(queries), expected, atol=1e-6)
    np.testing.assert_allclose(index.score_all(torch.from_numpy(queries[0])), expected[0], atol=1e-6)
    assert index.ids[:2] == ["img0", "img1"] and index.row_of("img9") == 9
    with pytest.raises(ValueError, match=r"query must have shape \(8,\)"):
        index.search(np.zeros(5, dtype=np.float32))
    with pytest.raises(IndexError, match="rows must be in"):
        index.vectors([50])


# ------------------------------------------------------------------------------------------- compressed
@pytest.mark.parametrize("kind, params", [
    ("ivfpq", {}),
    ("ivfpq", {"nlist": HNSW_QUANTIZER_LISTS + 64, "nprobe": 64}),  # lists found through an HNSW graph
    ("hnsw", {"hnsw_m": 16, "ef_construction": 40}),
])
def test_compressed_kinds_recall_and_exact_rescoring(tmp_path, kind, params):
    gallery = harness.SyntheticGallery(count=800, num_query_tokens=8, dim=32, seed=5)
    vectors = np.concatenate(list(gallery.chunks()))
    index = _write(tmp_path / kind, vectors, kind=kind, candidates=60, **params)
    assert index.kind == kind and not (tmp_path / kind / FLAT_FILE).exists()
    if "nlist" in params:
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(index._coarse).quantizer)
        assert isinstance(quantizer, faiss.IndexHNSW) and quantizer.hnsw.efSearch >= params["nprobe"]
    recalls = []
    for query in gallery.queries(40):
        hits = index.search(query, 10)
        rows, _ = _brute(vectors, query, 10)
        recalls.append(len({hit.row for hit in hits} & set(rows.tolist())) / 10)
        # Hit scores are exact up to the fp16 storage of the re-scoring vectors.
        exact = np.einsum("d,nqd->nq", query, vectors[[hit.row for hit in hits]]).max(axis=1)
        np.testing.assert_allclose([hit.score for hit in hits], exact, atol=2e-3)
    assert np.mean(recalls) >= 0.95
    assert np.abs(index.score_all(query) - (vectors @ query).max(axis=1)).max() < 2e-3
    # Asking for more images than the gallery holds ranks all of them exhaustively.
    everything = index.search(query, 1000)
    assert sorted(hit.row for hit in everything) == list(range(800))
    assert [hit.score for hit in everything] == sorted((hit.score for hit in everything), reverse=True)


def test_ivfpq_refuses_tiny_galleries(tmp_path):
    vectors = _unit(np.random.default_rng(6).standard_normal((10, 4, 8)))
    with pytest.raises(ValueError, match="at least 1024 vectors"):
        _write(tmp_path / "index", vectors, kind="ivfpq")


# ------------------------------------------------------------------------------------------- building
def _png_folder(folder, count, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{number:02d}.png")
    return folder


def test_build_encodes_with_the_model_and_skips_unreadable_files(tmp_path, tiny_model):
    images = _png_folder(tmp_path / "images", 5)
    (images / "notes.txt").write_text("not an image")
    truncated = (images / "im01.png").read_bytes()[:60]
    (images / "sub").mkdir()
    (images / "sub" / "broken.png").write_bytes(truncated)
    items = index_build.items_from_images(images)
    assert [item.id for item in items] == ["im00.png", "im01.png", "im02.png", "im03.png", "im04.png",
                                           "notes.txt", "sub/broken.png"]
    index = GalleryIndex.build(tiny_model, items, tmp_path / "index", batch_size=3, progress=False)
    assert len(index) == 5 and index.report.indexed == 5
    assert index.report.skipped_count == 2
    assert {skipped.id for skipped in index.report.skipped} == {"notes.txt", "sub/broken.png"}
    transform = ImageTransform(tiny_model.config.preprocess)
    pixels = torch.stack([transform(Image.open(images / f"im{n:02d}.png")) for n in range(5)])
    expected = tiny_model.encode_target(pixels).numpy()
    np.testing.assert_allclose(index.vectors(range(5)), expected, atol=1e-6)
    assert index.sizes[0] == [40, 30]
    assert index.info["preprocess"]["image_size"] == tiny_model.config.preprocess.image_size
    reloaded = GalleryIndex.load(tmp_path / "index", model=tiny_model)
    assert reloaded.report.skipped_count == 2
    query = torch.nn.functional.normalize(torch.randn(tiny_model.config.embed_dim), dim=0)
    assert [hit.id for hit in reloaded.search(query, 5)] == [index.ids[row] for row in
                                                            _brute(expected, query.numpy(), 5)[0]]


def test_empty_and_unreadable_galleries_are_errors(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        index_build.items_from_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="no gallery items"):
        GalleryIndex.build(tiny_model, [], tmp_path / "index", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not a png")
    items = index_build.items_from_images(tmp_path / "junk")
    with pytest.raises(ValueError, match="no readable images among 1 gallery items"):
        GalleryIndex.build(tiny_model, items, tmp_path / "index", progress=False)
    assert not (tmp_path / "index").exists()
    duplicate = [GalleryItem(id="x", path=tmp_path / "a.png"), GalleryItem(id="x", path=tmp_path / "b.png")]
    with pytest.raises(ValueError, match="unique"):
        GalleryIndex.build(tiny_model, duplicate, tmp_path / "index", progress=False)


def _build_crashing_at_batch(monkeypatch, model, items, out, crash_at: int, **kwargs) -> None:
    """Start a build of `items` that is interrupted while encoding batch number `crash_at` (1-based)."""
    real_encode = crash_encoding_at_batch(monkeypatch, crash_at)
    with pytest.raises(KeyboardInterrupt):
        GalleryIndex.build(model, items, out, progress=False, **kwargs)
    monkeypatch.setattr(index_build, "_encode_batch", real_encode)


def test_interrupted_build_leaves_no_index_and_resumes(tmp_path, tiny_model, monkeypatch):
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 10))
    out = tmp_path / "index"
    _build_crashing_at_batch(monkeypatch, tiny_model, items, out, crash_at=3, batch_size=3)
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        GalleryIndex.load(out)

    real_encode, calls = index_build._encode_batch, []
    monkeypatch.setattr(index_build, "_encode_batch", lambda model, pixels: calls.append(len(pixels)) or
                        real_encode(model, pixels))
    resumed = GalleryIndex.build(tiny_model, items, out, batch_size=3, progress=False)
    assert calls == [3, 1]  # only the two batches that were not finished
    assert resumed.report.resumed_batches == 2
    assert not (tmp_path / ".index.work").exists()
    fresh = GalleryIndex.build(tiny_model, items, tmp_path / "fresh", batch_size=3, progress=False, resume=False)
    np.testing.assert_array_equal(resumed.vectors(range(10)), fresh.vectors(range(10)))
    assert resumed.ids == fresh.ids


def test_build_encodes_in_the_asked_precision_and_records_it(tmp_path, tiny_model, monkeypatch):
    from cir_core.precision import query_model, resolve_gallery_precision

    items = index_build.items_from_images(_png_folder(tmp_path / "images", 5))
    transform = ImageTransform(tiny_model.config.preprocess)
    pixels = torch.stack([transform(Image.open(item.path)) for item in items])
    exact = tiny_model.encode_target(pixels).numpy()
    int8 = GalleryIndex.build(tiny_model, items, tmp_path / "int8", batch_size=5, progress=False, precision="int8")
    assert int8.info["precision"] == "int8"
    np.testing.assert_allclose(int8.vectors(range(5)), query_model(tiny_model, "int8").encode_target(pixels).numpy(),
                               atol=1e-6)
    assert not np.allclose(int8.vectors(range(5)), exact, atol=1e-6)  # really encoded in int8
    np.testing.assert_allclose(int8.vectors(range(5)), exact, atol=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = tiny_model.encode_target(pixels).float().numpy()
    bf16 = GalleryIndex.build(tiny_model, items, tmp_path / "bf16", batch_size=5, progress=False, precision="bf16")
    assert bf16.info["precision"] == "bf16"
    np.testing.assert_allclose(bf16.vectors(range(5)), autocast, atol=1e-6)
    assert GalleryIndex.load(tmp_path / "int8", model=tiny_model).fingerprint == bf16.fingerprint  # same weights
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    auto = GalleryIndex.build(tiny_model, items, tmp_path / "auto", batch_size=5, progress=False, precision="auto")
    assert auto.info["precision"] == "fp32"  # no bf16 units: auto is full precision
    np.testing.assert_allclose(auto.vectors(range(5)), exact, atol=1e-6)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_gallery_precision(tiny_model, "auto") == "bf16"
    with pytest.raises(ValueError, match="gallery precision must be one of auto, fp32, bf16, int8, got 'int4'"):
        GalleryIndex.build(tiny_model, items, tmp_path / "bad", progress=False, precision="int4")
    assert not (tmp_path / "bad").exists()


def test_a_build_resumed_in_another_precision_starts_over(tmp_path, tiny_model, monkeypatch):
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 6))
    _build_crashing_at_batch(monkeypatch, tiny_model, items, tmp_path / "index", crash_at=2, batch_size=3)
    resumed = GalleryIndex.build(tiny_model, items, tmp_path / "index", batch_size=3, progress=False,
                                 precision="int8")
    assert resumed.report.resumed_batches == 0 and resumed.info["precision"] == "int8"


def test_crash_while_writing_keeps_the_previous_index(tmp_path, tiny_model, monkeypatch):
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 4))
    out = tmp_path / "index"
    GalleryIndex.build(tiny_model, items[:2], out, progress=False)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_store, "_write_metadata", fail)
    with pytest.raises(OSError, match="disk full"):
        GalleryIndex.build(tiny_model, items, out, progress=False)
    assert len(GalleryIndex.load(out, model=tiny_model)) == 2
    assert [path.name for path in tmp_path.iterdir() if ".tmp-" in path.name] == []
    monkeypatch.undo()
    # The encoded batches survived the failed write: the rerun only writes.
    monkeypatch.setattr(index_build, "_encode_batch", lambda *args: pytest.fail("should not re-encode"))
    assert len(GalleryIndex.build(tiny_model, items, out, progress=False)) == 4


def test_build_replaces_only_an_index_of_its_own(tmp_path, tiny_model, tiny_checkpoint, capsys):
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 2))
    dataset = tmp_path / "shapes"
    (dataset / "images").mkdir(parents=True)
    (dataset / "info.json").write_text(json.dumps({"benchmark": "shapes", "version": 1}))
    with pytest.raises(ValueError, match="is not a gallery index"):
        GalleryIndex.build(tiny_model, items, dataset, progress=False)
    code = main(["build-index", "--images", str(tmp_path / "images"), "--model", "local-dir:/nowhere",
                 "--out", str(dataset)])
    assert code == 2 and "is not a gallery index" in capsys.readouterr().err  # refused before the model is read
    assert sorted(p.name for p in dataset.iterdir()) == ["images", "info.json"]

    out = tmp_path / "index"
    GalleryIndex.build(tiny_model, items, out, progress=False)
    assert len(GalleryIndex.build(tiny_model, items[:1], out, progress=False)) == 1  # its own index: replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not part of its index \(notes.txt\)"):
        GalleryIndex.build(tiny_model, items, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and len(GalleryIndex.load(out)) == 1
    (out / "notes.txt").unlink()
    (out / INFO_FILE).write_text("{damaged")
    assert len(GalleryIndex.build(tiny_model, items, out, progress=False)) == 2  # a damaged index of its own


def test_a_second_build_into_the_same_destination_is_refused(tmp_path, tiny_model, monkeypatch):
    import threading

    first_items = index_build.items_from_images(_png_folder(tmp_path / "first", 6, seed=1))
    other_items = index_build.items_from_images(_png_folder(tmp_path / "other", 6, seed=2))
    out = tmp_path / "index"
    real_encode, started, release = index_build._encode_batch, threading.Event(), threading.Event()

    def slow_encode(model, pixels):
        started.set()
        release.wait(30)
        return real_encode(model, pixels)

    monkeypatch.setattr(index_build, "_encode_batch", slow_encode)
    errors = []

    def build_first():
        try:
            GalleryIndex.build(tiny_model, first_items, out, batch_size=2, progress=False)
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)

    first = threading.Thread(target=build_first)
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(ValueError, match=f"another build is writing {out}"):
            GalleryIndex.build(tiny_model, other_items, out, batch_size=2, progress=False)
        assert (tmp_path / ".index.work").is_dir()  # the first build's work folder was left alone
    finally:
        release.set()
        first.join(60)
    assert not errors
    built = GalleryIndex.load(out, model=tiny_model)
    transform = ImageTransform(tiny_model.config.preprocess)
    expected = tiny_model.encode_target(torch.stack([transform(Image.open(i.path)) for i in first_items])).numpy()
    np.testing.assert_allclose(built.vectors(range(6)), expected, atol=1e-6)
    monkeypatch.setattr(index_build, "_encode_batch", real_encode)
    assert len(GalleryIndex.build(tiny_model, other_items[:2], out, progress=False)) == 2  # the lock was released
    assert not (tmp_path / ".index.lock").exists()


def test_resume_encodes_again_the_files_that_changed(tmp_path, tiny_model, monkeypatch):
    import os

    images = _png_folder(tmp_path / "images", 9)
    items = index_build.items_from_images(images)
    out = tmp_path / "index"
    _build_crashing_at_batch(monkeypatch, tiny_model, items, out, crash_at=3, batch_size=3)  # batches 0, 1 done
    changed = images / "im04.png"  # in batch 1: same name, same size, new pixels and time
    stat = changed.stat()
    with Image.open(images / "im07.png") as replacement:
        replacement.save(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    real_encode, calls = index_build._encode_batch, []
    monkeypatch.setattr(index_build, "_encode_batch", lambda model, pixels: calls.append(len(pixels)) or
                        real_encode(model, pixels))
    resumed = GalleryIndex.build(tiny_model, items, out, batch_size=3, progress=False)
    assert calls == [3, 3] and resumed.report.resumed_batches == 1  # batch 1 again, then batch 2
    fresh = GalleryIndex.build(tiny_model, items, tmp_path / "fresh", batch_size=3, progress=False, resume=False)
    np.testing.assert_array_equal(resumed.vectors(range(9)), fresh.vectors(range(9)))
    np.testing.assert_array_equal(resumed.vectors(4), resumed.vectors(7))  # im04 now holds im07's pixels


def test_ivfpq_settings_are_checked_before_any_image_is_encoded(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(index_build, "_read_batch", lambda *args: pytest.fail("an image was read"))
    items = [GalleryItem(id=f"img{n}", path=tmp_path / f"img{n}.png") for n in range(300)]  # 300 x 4 vectors
    with pytest.raises(ValueError, match="at least 1024 vectors"):
        GalleryIndex.build(tiny_model, items[:3], tmp_path / "index", params=IndexParams(kind="ivfpq"), progress=False)
    with pytest.raises(ValueError, match="with nlist=4096 trains 4096 centroids, more than the 1200 training vectors"):
        GalleryIndex.build(tiny_model, items, tmp_path / "index", params=IndexParams(kind="ivfpq", nlist=4096),
                           progress=False)
    with pytest.raises(ValueError, match="with pq_bits=16 trains 65536 centroids"):
        GalleryIndex.build(tiny_model, items, tmp_path / "index", params=IndexParams(kind="ivfpq", pq_bits=16),
                           progress=False)
    assert list(tmp_path.iterdir()) == []  # no work folder, no index


def test_non_finite_vectors_are_refused(tmp_path, tiny_model):
    import copy

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.vision_projection.weight[0, 0] = float("nan")
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 3))
    with pytest.raises(ValueError, match="3 of 3 images in the gallery batch from 'im00.png' have non-finite vectors"):
        GalleryIndex.build(broken, items, tmp_path / "index", progress=False)
    assert not (tmp_path / "index").exists()
    vectors = _unit(np.random.default_rng(0).standard_normal((4, 2, 8)))
    vectors[2, 1, 3] = np.inf
    with pytest.raises(ValueError, match="1 of 4 images in flat index rows 0..3 have non-finite vectors"):
        _write(tmp_path / "written", vectors)
    assert not (tmp_path / "written").exists()


def test_huge_and_extreme_aspect_gallery_images_are_skipped_unread(tmp_path, tiny_model, monkeypatch):
    images = _png_folder(tmp_path / "images", 2)
    Image.new("RGB", (40000, 1)).save(images / "strip.png")  # padded to 40000 x 32000 by TargetPad
    Image.new("1", (8000, 6000)).save(images / "huge.png")  # 48 megapixels, a small file
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or real_load(image))
    index = GalleryIndex.build(tiny_model, index_build.items_from_images(images), tmp_path / "index", progress=False)
    assert index.ids == ["im00.png", "im01.png"]
    reasons = {skipped.id: skipped.reason for skipped in index.report.skipped}
    assert "40000x1: sides more than 50:1 apart" in reasons["strip.png"]
    assert "8000x6000 = 48 megapixels; the limit is 40 megapixels" in reasons["huge.png"]
    assert (40, 30) in decoded and (40000, 1) not in decoded and (8000, 6000) not in decoded


# ------------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def built_index(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("built")
    items = index_build.items_from_images(_png_folder(folder / "images", 3))
    GalleryIndex.build(tiny_model, items, folder / "index", progress=False)
    return folder / "index"


def test_index_of_another_model_is_refused(built_index, tiny_model):
    assert len(GalleryIndex.load(built_index, model=tiny_model)) == 3
    torch.manual_seed(123)
    other = cir_core.create_model("tiny-test").eval()
    with pytest.raises(GalleryIndexError, match="fingerprint"):
        GalleryIndex.load(built_index, model=other)
    with pytest.raises(GalleryIndexError, match="fingerprint is 0000000000000000"):
        GalleryIndex.load(built_index, expected_fingerprint="0000000000000000")


def _copy(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def test_damaged_index_is_refused(built_index, tmp_path):
    flipped = _copy(built_index, tmp_path / "flipped")
    data = bytearray((flipped / FLAT_FILE).read_bytes())
    data[-5] ^= 0xFF
    (flipped / FLAT_FILE).write_bytes(bytes(data))
    with pytest.raises(GalleryIndexError, match=f"{FLAT_FILE} does not match its sha256"):
        GalleryIndex.load(flipped)

    truncated = _copy(built_index, tmp_path / "truncated")
    (truncated / METADATA_FILE).write_bytes((truncated / METADATA_FILE).read_bytes()[:-10])
    with pytest.raises(GalleryIndexError, match=f"{METADATA_FILE} has .* bytes"):
        GalleryIndex.load(truncated)

    missing = _copy(built_index, tmp_path / "missing")
    (missing / FLAT_FILE).unlink()
    with pytest.raises(GalleryIndexError, match=f"{FLAT_FILE} is missing"):
        GalleryIndex.load(missing)

    no_info = _copy(built_index, tmp_path / "no-info")
    (no_info / INFO_FILE).unlink()
    with pytest.raises(GalleryIndexError, match=f"{INFO_FILE} is missing"):
        GalleryIndex.load(no_info)

    bad_info = _copy(built_index, tmp_path / "bad-info")
    (bad_info / INFO_FILE).write_text("{not json")
    with pytest.raises(GalleryIndexError, match=f"cannot read {INFO_FILE}"):
        GalleryIndex.load(bad_info)


def _with_info(built_index, folder, edit):
    damaged = _copy(built_index, folder)
    info = json.loads((damaged / INFO_FILE).read_text())
    edit(info)
    (damaged / INFO_FILE).write_text(json.dumps(info))
    return damaged


@pytest.mark.parametrize("edit, message", [
    (lambda info: info["files"][FLAT_FILE].pop("bytes"), f"has no sha256 and byte size for {FLAT_FILE}"),
    (lambda info: info.update(files=list(info["files"])), "has files of type list"),
    (lambda info: info["files"].update({"../outside": {"sha256": "0", "bytes": 1}}),
     "lists an unknown file '../outside'"),
    (lambda info: info["params"].update(warp=9), "has params .*; expected an object with some of"),
    (lambda info: info["params"].update(candidates="200"), "has params.candidates '200'; expected a whole number"),
    (lambda info: info["params"].update(candidates=0), "has params that cannot be searched"),
    (lambda info: info.update(build=[1, 2]), "has a build report that is not one"),
    (lambda info: info.update(build={"skipped": [{"file": "x"}]}), "has a build report that is not one"),
    (lambda info: info.update(count="3"), "has count '3'; expected a whole number >= 1"),
    (lambda info: info.update(embed_dim=True), "has embed_dim True; expected a whole number >= 1"),
    (lambda info: info.update(kind="lsh"), "has kind 'lsh'"),
    (lambda info: info.update(vision_features={"shape": "big"}), "has vision_features"),
])
def test_malformed_info_is_one_line_error(built_index, tmp_path, edit, message):
    damaged = _with_info(built_index, tmp_path / "damaged", edit)
    with pytest.raises(GalleryIndexError, match=f"is damaged: {INFO_FILE} {message}") as caught:
        GalleryIndex.load(damaged, verify=False)
    assert "\n" not in str(caught.value)


@pytest.mark.slow  # a fresh interpreter per case (a crash must not take the test run down)
@pytest.mark.parametrize("key, value", [("embed_dim", 4096), ("embed_dim", 8), ("num_query_tokens", 64)])
def test_info_that_disagrees_with_the_vectors_is_refused_not_read(built_index, tmp_path, key, value):
    """Before, a wider embed_dim made a view past the vectors: score_all crashed the process."""
    import subprocess
    import sys

    damaged = _with_info(built_index, tmp_path / "damaged", lambda info: info.update({key: value}))
    script = ("import sys; from cir_core.index import GalleryIndex\n"
              "index = GalleryIndex.load(sys.argv[1], verify=False); index.score_all([0.0] * index.dim)")
    result = subprocess.run([sys.executable, "-c", script, str(damaged)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-500:]
    assert f"{FLAT_FILE} holds 12 vectors of width 16, {INFO_FILE} says" in result.stderr


@pytest.mark.parametrize("second, third, message", [
    ("{not json", '{"id": "x"}', "line 2 of metadata.jsonl is not an image record"),
    (None, '{"id": "x"}', "line 3 of metadata.jsonl is not an image record .*it needs"),
])
def test_a_bad_metadata_line_names_the_file_and_line(built_index, tmp_path, second, third, message):
    damaged = _copy(built_index, tmp_path / "damaged")
    lines = (damaged / METADATA_FILE).read_text().splitlines()
    (damaged / METADATA_FILE).write_text("\n".join([lines[0], second or lines[1], third]) + "\n")
    info = json.loads((damaged / INFO_FILE).read_text())
    info["files"][METADATA_FILE]["bytes"] = (damaged / METADATA_FILE).stat().st_size
    (damaged / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(GalleryIndexError, match=message):  # with its recorded size: caught reading the records
        GalleryIndex.load(damaged, verify=False)


def test_index_loader_fuzz_gives_one_line_errors(built_index, tmp_path):
    """Seeded random corruptions of info.json values and of the data files: loading (and then reading
    every record and scoring) either works or fails with one GalleryIndexError line."""
    import random
    import shutil

    rng = random.Random(22)
    info = json.loads((built_index / INFO_FILE).read_text())
    junk = [None, True, -1, 0, 1.5, "x", "", [], [1, 2], {}, {"a": 1}, 10**12, 4096]
    failures = 0
    for trial in range(80):
        folder = tmp_path / f"trial{trial}"
        shutil.copytree(built_index, folder)
        how = rng.choice(["top", "params", "files", "build", "bytes", "truncate"])
        verify = how in ("bytes", "truncate") and rng.random() < 0.5
        data = json.loads(json.dumps(info))
        if how in ("top", "params", "build"):
            node = data if how == "top" else data.setdefault(how, {})
            node[rng.choice(sorted(node) or ["indexed"])] = rng.choice(junk)
        elif how == "files":
            entry = data["files"][rng.choice(sorted(data["files"]))]
            entry[rng.choice(["sha256", "bytes"])] = rng.choice(junk)
        (folder / INFO_FILE).write_text(json.dumps(data))
        if how in ("bytes", "truncate"):
            corrupt_file(folder / rng.choice([FLAT_FILE, METADATA_FILE]), rng, truncate=how == "truncate",
                         max_flips=8)
        try:
            index = GalleryIndex.load(folder, verify=verify)
            index.ids, index.score_all(np.zeros(index.dim, dtype=np.float32))
        except GalleryIndexError as error:
            failures += 1
            assert str(error) and "\n" not in str(error), (how, str(error))
    assert failures >= 40


# ------------------------------------------------------------------------------------------- CLIs
def test_cli_build_index_from_images(tmp_path, tiny_checkpoint, tiny_model, capsys):
    images = _png_folder(tmp_path / "images", 5, seed=7)
    (images / "readme.txt").write_text("hello")
    out = tmp_path / "index"
    code = main(["build-index", "--images", str(images), "--model", f"local-dir:{tiny_checkpoint}",
                 "--out", str(out), "--batch-size", "2", "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 5 and summary["skipped"] == 1
    assert summary["skipped_files"][0]["path"].endswith("readme.txt")
    index = GalleryIndex.load(out, model=tiny_model)
    assert index.info["model"] == f"local-dir:{tiny_checkpoint}"
    assert summary["precision"] == index.info["precision"] == "fp32"
    assert len(index.search(np.ones(tiny_model.config.embed_dim, dtype=np.float32), 3)) == 3
    code = main(["build-index", "--images", str(images), "--model", f"local-dir:{tiny_checkpoint}",
                 "--out", str(tmp_path / "int8"), "--precision", "int8", "--no-progress", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["precision"] == "int8"
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["build-index", "--images", str(images), "--model", f"local-dir:{tiny_checkpoint}",
              "--out", str(tmp_path / "x"), "--precision", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_cli_build_index_errors(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    model = f"local-dir:{tiny_checkpoint}"
    assert main(["build-index", "--images", str(tmp_path / "empty"), "--model", model,
                 "--out", str(tmp_path / "index")]) == 2
    assert "is empty" in capsys.readouterr().err
    images = _png_folder(tmp_path / "images", 1)
    assert main(["build-index", "--images", str(images), "--model", f"local-dir:{tmp_path / 'nope'}",
                 "--out", str(tmp_path / "index")]) == 2
    assert "does not exist" in capsys.readouterr().err
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("precious")
    assert main(["build-index", "--images", str(images), "--model", model, "--out", str(occupied)]) == 2
    assert "is not a gallery index (no info.json written by an index build)" in capsys.readouterr().err
    assert (occupied / "thesis.tex").read_text() == "precious"


def test_cli_build_index_from_shapes_data(tmp_path, tiny_checkpoint, capsys):
    from cir_core.data.shapes import ShapesCounts, read_shapes_split, write_shapes_dataset

    data = tmp_path / "shapes"
    write_shapes_dataset(data, seed=0, image_size=32, counts=ShapesCounts(train=4, val=2, test=6), progress=False,
                         workers=1)
    out = tmp_path / "index"
    assert main(["build-index", "--data", str(data), "--split", "test", "--model", f"local-dir:{tiny_checkpoint}",
                 "--out", str(out), "--no-progress"]) == 0
    assert "indexed" in capsys.readouterr().out
    index = GalleryIndex.load(out)
    split = read_shapes_split(data, "test")
    assert index.ids == split.gallery
    assert "objects" in json.loads(index.labels[0])
    assert main(["build-index", "--data", str(data), "--split", "nope", "--model", f"local-dir:{tiny_checkpoint}",
                 "--out", str(tmp_path / "other")]) == 2
    assert "unknown shapes split 'nope'" in capsys.readouterr().err


def test_cli_build_index_from_cirr_data(tmp_path, tiny_checkpoint, capsys):
    from test_cirr import make_cirr_standin, needs_real_files

    if needs_real_files.args[0]:  # the stand-in is made from the real val annotations
        pytest.skip(needs_real_files.kwargs["reason"])

    from cir_core.data.cirr import read_cirr

    data = make_cirr_standin(tmp_path / "cirr", query_sets=1, gallery_size=10)
    out = tmp_path / "index"
    assert main(["build-index", "--data", str(data), "--dataset", "cirr", "--model", f"local-dir:{tiny_checkpoint}",
                 "--out", str(out), "--no-progress"]) == 0
    assert GalleryIndex.load(out).ids == read_cirr(data, "val").gallery  # the val split by default
    assert main(["build-index", "--data", str(data), "--dataset", "coco", "--model", f"local-dir:{tiny_checkpoint}",
                 "--out", str(tmp_path / "other")]) == 2
    assert "unknown dataset 'coco'" in capsys.readouterr().err


def test_cli_bench_index(capsys):
    code = main(["bench", "index", "--sizes", "300", "--queries", "5", "--num-query-tokens", "4", "--dim", "16",
                 "--kinds", "flat", "--in-process", "--json"])
    assert code == 0
    rows = {row["method"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"naive", "flat"}
    assert rows["naive"]["recall"] == 1.0 and rows["flat"]["recall"] == 1.0
    flat = rows["flat"]
    assert flat["rss_peak_mb"] > 0 and flat["p50_ms"] > 0 and flat["data_bytes"] >= 300 * 4 * 16 * 4
    assert flat["speedup"] == pytest.approx(rows["naive"]["p50_ms"] / flat["p50_ms"])
    assert main(["bench", "index", "--sizes", "ten"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["bench", "index", "--sizes", "300", "--kinds", "annoy"]) == 2
    assert "unknown index kind 'annoy'" in capsys.readouterr().err


def test_bench_streams_the_naive_way_when_the_matrix_does_not_fit(tmp_path):
    config = harness.IndexBenchConfig(sizes=(300,), kinds=("flat", "hnsw"), num_query_tokens=4, dim=16, queries=6,
                              naive_streamed_queries=2, params=IndexParams(candidates=50, hnsw_m=16,
                                                                           ef_construction=40), naive_ram_bytes=0,
                              flat_ram_bytes=0, fresh_process=False, work_dir=tmp_path)
    rows = harness.run_index_benchmark(config)
    assert [row.method for row in rows] == ["naive (streamed fp16)", "hnsw"]  # flat skipped: over flat_ram_bytes
    assert rows[0].recall == 1.0 and rows[1].recall >= 0.9
    assert rows[1].build_s > 0 and rows[1].data_bytes > 300 * 4 * 16 * 2


def test_synthetic_gallery_is_deterministic_and_unit_norm():
    first = np.concatenate(list(harness.SyntheticGallery(count=2100, num_query_tokens=4, dim=16, seed=3).chunks()))
    again = np.concatenate(list(harness.SyntheticGallery(count=2100, num_query_tokens=4, dim=16, seed=3).chunks()))
    assert first.shape == (2100, 4, 16)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=-1), 1.0, atol=1e-5)
    queries = harness.SyntheticGallery(count=2100, num_query_tokens=4, dim=16, seed=3).queries(7)
    assert queries.shape == (7, 16)


def test_search_params_and_the_sweep_script(tmp_path, capsys):
    import importlib.util

    gallery = harness.SyntheticGallery(count=800, num_query_tokens=8, dim=32, seed=5)
    vectors = np.concatenate(list(gallery.chunks()))
    index = _write(tmp_path / "ivfpq", vectors, kind="ivfpq", candidates=60)
    index.set_search_params(nprobe=3, candidates=40)
    assert (index.params.nprobe, index.params.candidates) == (3, 40)
    with pytest.raises(ValueError, match="at least 1"):
        index.set_search_params(candidates=0)
    spec = importlib.util.spec_from_file_location("sweep_index", Path(__file__).parents[1] / "benchmarks" / "sweep_index.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    np.save(tmp_path / "queries.npy", gallery.queries(8))
    common = ["--index", str(tmp_path / "ivfpq"), "--queries", str(tmp_path / "queries.npy")]
    assert sweep.main(common + ["--settings", "1:20,16:60"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| 1") and "recall" not in line]
    assert [(int(row[1]), int(row[2])) for row in rows] == [(1, 20), (16, 60)]
    assert all(0.0 <= float(row[5]) <= 1.0 for row in rows) and float(rows[1][5]) >= float(rows[0][5])
    for bad in ("16", "a:b", "0:10"):
        with pytest.raises(SystemExit):
            sweep.main(common + ["--settings", bad])
        assert "--settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--index", str(tmp_path / "missing"), "--queries", str(tmp_path / "queries.npy")])
    assert "cannot load" in capsys.readouterr().err
