"""Engine: rankings against brute force, ground truth, caches, comparisons, failures, bad input."""
import dataclasses
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import cir_core
from cir_core.checkpoints import CheckpointError, load_model
from cir_core.data.shapes import read_shapes_split
from cir_core.data.query_groups import VIEW_ANGLE
from cir_core.data.registry import open_source
from cir_core.engine import Engine, QueryError, load_query_image
from cir_core.transforms import ImageTransform
from tiny_gallery import png_with_forged_size, tiny_engine, write_image_sensitive_checkpoint, write_tiny_shapes

CAPTION = "make the red circle large"
TOLERANCE = 1e-5  # scores recomputed from the index's own vectors
BF16_TOLERANCE = 3e-2  # the gallery may be encoded under bf16 autocast


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return write_tiny_shapes(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_image_sensitive_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def model(checkpoint):
    """The same weights loaded separately from the engine's copy."""
    return load_model(f"local-dir:{checkpoint}")


@pytest.fixture(scope="module")
def engine(checkpoint, shapes_dir, cache_root):
    return tiny_engine(checkpoint, shapes_dir, cache_root)


@pytest.fixture(scope="module")
def brute_force(model, engine):
    """Reference scores: the query encoded directly, scored against every vector stored in the index."""
    transform = ImageTransform(model.config.preprocess)
    pixels = torch.stack([transform(Image.open(engine.gallery_path(i))) for i in engine.gallery_ids])
    stored = torch.from_numpy(engine.index.vectors(range(len(engine.gallery_ids))))  # (N, Q, D)

    def scores(row: int, caption: str) -> torch.Tensor:
        query = model.encode_query(pixels[row:row + 1], caption).query
        result = model.score(query, stored)[0].clone()
        result[row] = float("-inf")
        return result

    return scores


def test_index_holds_the_models_target_vectors(model, engine):
    transform = ImageTransform(model.config.preprocess)
    pixels = torch.stack([transform(Image.open(engine.gallery_path(i))) for i in engine.gallery_ids])
    stored = torch.from_numpy(engine.index.vectors(range(len(engine.gallery_ids))))
    assert torch.allclose(model.encode_target(pixels), stored, atol=BF16_TOLERANCE)


def image_file(tmp_path, name, image, **save_args):
    path = tmp_path / name
    image.save(path, **save_args)
    return path


def scene_image(size=(40, 28)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------------- rankings
def test_ranking_equals_brute_force_over_the_gallery(engine, brute_force):
    row = 3
    reference = engine.gallery_ids[row]
    result = engine.search(reference, CAPTION, k=5)
    expected = brute_force(row, CAPTION)
    assert [h.rank for h in result.hits] == [1, 2, 3, 4, 5]
    assert reference not in [h.id for h in result.hits]
    for hit in result.hits:
        assert hit.score == pytest.approx(float(expected[engine.gallery_ids.index(hit.id)]), abs=TOLERANCE)
    fifth_best = float(expected.topk(5).values[-1])
    assert min(h.score for h in result.hits) >= fifth_best - TOLERANCE
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert result.reference_id == reference and result.query_vector.shape == (engine.model.config.embed_dim,)


def test_ground_truth_rank_outside_top_k_comes_from_exact_scores(engine, brute_force):
    row = 5
    expected = brute_force(row, CAPTION)
    worst_row = int(torch.where(torch.isinf(expected), torch.tensor(float("inf")), expected).argmin())
    truth = engine.gallery_ids[worst_row]
    result = engine.search(engine.gallery_ids[row], CAPTION, k=2, ground_truth_id=truth)
    assert result.ground_truth.id == truth and not result.ground_truth.in_top_k
    assert result.ground_truth.rank == len(engine.gallery_ids) - 1  # last, with the reference excluded
    assert result.ground_truth.score == pytest.approx(float(expected[worst_row]), abs=TOLERANCE)
    first = engine.search(engine.gallery_ids[row], CAPTION, k=2, ground_truth_id=result.hits[0].id)
    assert first.ground_truth.rank == 1 and first.ground_truth.in_top_k


def test_gallery_reference_uses_the_feature_cache_and_matches_the_file(engine):
    reference = engine.gallery_ids[7]
    engine.search(reference, CAPTION, k=4, exclude_reference=False)
    hits_before = engine.features.hits
    by_id = engine.search(reference, CAPTION, k=4, exclude_reference=False)
    assert engine.features.hits == hits_before + 1
    by_file = engine.search(engine.gallery_path(reference), CAPTION, k=4, exclude_reference=False)
    assert by_file.reference_id is None
    assert [h.id for h in by_id.hits] == [h.id for h in by_file.hits]
    assert np.allclose([h.score for h in by_id.hits], [h.score for h in by_file.hits], atol=1e-5)
    assert np.allclose(by_id.query_vector, by_file.query_vector, atol=1e-5)
    other = engine.search(engine.gallery_ids[8], CAPTION, k=4, exclude_reference=False)
    assert np.abs(other.query_vector - by_id.query_vector).max() > 1e-4  # the comparison above can fail


def test_timings_cover_every_stage(engine):
    result = engine.search(engine.gallery_ids[0], CAPTION, k=3)
    t = result.timings
    assert min(t.image_encode_ms, t.prompt_ms, t.compose_ms, t.search_ms) >= 0 and t.explain_ms == 0
    assert t.total_ms == pytest.approx(t.image_encode_ms + t.prompt_ms + t.compose_ms + t.search_ms)
    summary = result.to_json()
    assert [r["id"] for r in summary["results"]] == [h.id for h in result.hits]
    assert set(summary["timings_ms"]) == {"image_encode", "prompt", "compose", "search", "explain", "total"}


def test_explanations_come_with_the_result(engine):
    result = engine.search(engine.gallery_ids[2], CAPTION, k=3, explain=True)
    explanation = result.explanation
    q = engine.model.num_query_tokens
    assert len(explanation.prompt_tokens) == q and len(explanation.auxiliary_tokens) == q
    assert explanation.attention.per_token.shape == (q, 4, 4)
    assert explanation.relevance_id == result.hits[0].id
    assert explanation.relevance.score == pytest.approx(result.hits[0].score, abs=BF16_TOLERANCE)  # fp32 recomputation
    assert result.timings.explain_ms > 0


def test_k_is_clamped_and_checked(engine):
    assert len(engine.search(engine.gallery_ids[0], CAPTION, k=10_000).hits) == len(engine.gallery_ids) - 1
    with pytest.raises(QueryError, match="at least 1"):
        engine.search(engine.gallery_ids[0], CAPTION, k=0)


def test_unknown_gallery_id_or_missing_file_is_named(engine):
    with pytest.raises(QueryError, match="neither a gallery image id nor an existing image file"):
        engine.search("no-such-image", CAPTION)
    with pytest.raises(QueryError, match="not an image of the gallery"):
        engine.search(engine.gallery_ids[0], CAPTION, ground_truth_id="no-such-image")
    with pytest.raises(QueryError, match="no reference image"):
        engine.search(None, CAPTION)


def test_concurrent_searches_match_sequential_ones(engine):
    jobs = [(engine.gallery_ids[i % 6], f"make the circle {c}") for i, c in enumerate(["red", "blue", "green"] * 4)]
    sequential = [[h.id for h in engine.search(ref, cap, k=5).hits] for ref, cap in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda job: [h.id for h in engine.search(*job, k=5).hits], jobs))
    assert parallel == sequential


def test_concurrent_explanations_match_sequential_ones(engine):
    jobs = [(engine.gallery_ids[i], caption) for i, caption in enumerate(["make the circle red", "mirror the scene",
                                                                           "remove the blue square"] * 2)]

    def explain(job):
        explanation = engine.search(*job, k=3, explain=True).explanation
        return explanation.attention.per_token, explanation.relevance.grid, explanation.prompt_tokens

    sequential = [explain(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(explain, jobs))
    for (attention, relevance, tokens), (attention_p, relevance_p, tokens_p) in zip(sequential, parallel):
        assert np.allclose(attention, attention_p, atol=1e-5) and np.allclose(relevance, relevance_p, atol=1e-4)
        assert [[m.token for m in row] for row in tokens] == [[m.token for m in row] for row in tokens_p]
    assert not np.allclose(sequential[0][0], sequential[1][0])  # different queries, different maps


# ---------------------------------------------------------------------- comparison and failures
def test_compare_gives_three_rankings_and_sprc_equals_search(engine, model):
    reference = engine.gallery_ids[4]
    comparison = engine.compare(reference, CAPTION, k=5, ground_truth_id=engine.gallery_ids[9])
    assert [r.name for r in comparison.rankings] == ["text-only", "image-only", "sprc"]
    sprc = comparison.rankings[2]
    assert [h.id for h in sprc.hits] == [h.id for h in engine.search(reference, CAPTION, k=5).hits]
    text_only = model.auxiliary_query(model.tokenize(CAPTION))[0]
    expected = float(engine.index.score_all(text_only)[engine.gallery_ids.index(comparison.rankings[0].hits[0].id)])
    assert comparison.rankings[0].hits[0].score == pytest.approx(expected, abs=TOLERANCE)
    assert all(r.ground_truth.id == engine.gallery_ids[9] for r in comparison.rankings)
    assert all(reference not in [h.id for h in r.hits] for r in comparison.rankings)


def test_benchmark_queries_and_failure_cases(engine, shapes_dir):
    queries = engine.benchmark_queries()
    assert len(queries) == len(read_shapes_split(shapes_dir, "test"))
    failures = engine.failure_cases()
    assert failures, "a random tiny model misses most targets"
    view_angle = [VIEW_ANGLE in f.query.groups for f in failures]
    assert any(view_angle) and view_angle == sorted(view_angle, reverse=True)  # view-angle edits first
    case = failures[0]
    check = engine.search(case.query.reference_id, case.query.caption, k=1, ground_truth_id=case.query.target_id)
    assert check.ground_truth.rank == case.rank > 1
    assert case.top_ids == [hit.id for hit in engine.search(case.query.reference_id, case.query.caption, k=3).hits]
    edit = failures[-1].query.groups[0]
    assert {f.query.groups[0] for f in engine.failure_cases(group=edit)} == {edit}
    word = failures[0].query.caption.split()[0]
    assert all(word in f.query.caption for f in engine.failure_cases(keyword=word.upper()))
    assert engine.failure_cases(keyword="no such words here") == []


def test_failure_list_is_cached_on_disk_and_survives_a_restart(checkpoint, shapes_dir, cache_root, engine,
                                                                  monkeypatch):
    from cir_core.evaluation.failures import load_ranks

    expected = engine.failure_cases()
    files = list((cache_root / "failures").glob("*.ranks"))
    assert len(files) == 1
    restarted = tiny_engine(checkpoint, shapes_dir, cache_root)

    def must_not_rank(*args):
        raise AssertionError("the cached failure list should have been used")

    monkeypatch.setattr(restarted._ranking, "compute", must_not_rank)
    restarted.prepare_failures().join(timeout=60)
    assert restarted._ranking.ready
    assert restarted.failure_cases() == expected
    # A damaged cache file is recomputed (and rewritten), never an error.
    files[0].write_text("{not json")
    monkeypatch.undo()
    again = tiny_engine(checkpoint, shapes_dir, cache_root)
    assert again.failure_cases() == expected
    cached = load_ranks(files[0], engine.source.name, engine.benchmark_queries(), engine.gallery_ids)
    assert cached == again._ranking.cases()  # written again, and usable


# ---------------------------------------------------------------------- construction
def test_index_is_cached_and_reused(checkpoint, shapes_dir, cache_root, engine):
    folders = list((cache_root / "indexes").iterdir())
    assert len(folders) == 1
    stamp = max(p.stat().st_mtime_ns for p in folders[0].iterdir())
    again = tiny_engine(checkpoint, shapes_dir, cache_root)
    assert max(p.stat().st_mtime_ns for p in folders[0].iterdir()) == stamp
    assert again.gallery_ids == engine.gallery_ids


def test_an_index_of_another_model_is_refused(tmp_path, shapes_dir, cache_root, engine):
    other = write_image_sensitive_checkpoint(tmp_path / "other", seed=123)
    index_dir = next((cache_root / "indexes").iterdir())
    with pytest.raises(ValueError, match="(?i)model|fingerprint"):
        Engine.from_uris(f"local-dir:{other}", index_dir=index_dir)


def test_missing_model_is_reported_clearly(tmp_path, shapes_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        Engine.from_uris(f"local-dir:{tmp_path / 'nothing'}", source=open_source("shapes", shapes_dir))


# ---------------------------------------------------------------------- bad input
def test_non_image_bytes_are_refused(engine, tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"this is a text file, not a picture\n" * 10)
    with pytest.raises(QueryError, match="not an image file"):
        engine.search(path, CAPTION)


def test_encoded_bytes_are_read_like_the_file(engine):
    path = engine.gallery_path(engine.gallery_ids[3])
    from_bytes = engine.search(open(path, "rb").read(), CAPTION, k=3)
    from_file = engine.search(path, CAPTION, k=3)
    assert np.allclose(from_bytes.query_vector, from_file.query_vector, atol=1e-6)
    with pytest.raises(QueryError, match="the uploaded image is not an image file"):
        engine.search(b"plain text, not an image", CAPTION)


def test_truncated_png_is_refused(engine, tmp_path):
    buffer = io.BytesIO()
    scene_image((64, 64)).save(buffer, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(QueryError, match="corrupt or truncated"):
        engine.search(path, CAPTION)


def test_decompression_bomb_is_refused_fast_before_decoding(engine, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_forged_size(20000, 20000))
    started = time.perf_counter()
    with pytest.raises(QueryError, match="too large|megapixels"):
        engine.search(path, CAPTION)
    assert time.perf_counter() - started < 1.0
    path.write_bytes(png_with_forged_size(8000, 6000))  # 48 MP: under Pillow's own limit, over ours
    with pytest.raises(QueryError, match="48 megapixels"):
        engine.search(path, CAPTION)


def test_a_thin_strip_is_refused_before_padding_blows_it_up(engine, tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (40000, 1), "red").save(strip, optimize=True)  # a few hundred bytes, 40000:1
    assert strip.stat().st_size < 1000
    with pytest.raises(QueryError, match="50:1"):
        engine.search(strip, CAPTION)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1200, 30), "red").save(wide)  # 40:1 is still a picture
    assert engine.search(wide, CAPTION, k=3).hits


@pytest.mark.parametrize("name, make", [
    ("rgba.png", lambda: scene_image().convert("RGBA")),
    ("grey.png", lambda: scene_image().convert("L")),
    ("sixteen.png", lambda: Image.fromarray((np.arange(40 * 28, dtype=np.uint16).reshape(28, 40) * 50))),
    ("cmyk.jpg", lambda: scene_image().convert("CMYK")),
])
def test_unusual_image_modes_are_accepted(engine, tmp_path, name, make):
    image = make()
    path = image_file(tmp_path, name, image)
    with Image.open(path) as check:
        assert check.mode == image.mode or (name == "sixteen.png" and check.mode.startswith("I"))
    result = engine.search(path, CAPTION, k=3)
    assert len(result.hits) == 3


def test_exif_rotation_is_applied(engine, tmp_path):
    image = scene_image((48, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = image_file(tmp_path, "rotated.jpg", image, exif=exif, quality=95)
    with Image.open(path) as stored:
        raw = Image.fromarray(np.asarray(stored))  # the pixels as stored, without the EXIF tag
    assert raw.size == (48, 24)
    upright = raw.transpose(Image.Transpose.ROTATE_270)
    loaded = load_query_image(path)
    assert loaded.size == (24, 48) and np.array_equal(np.asarray(loaded), np.asarray(upright))
    assert len(engine.search(path, CAPTION, k=5).hits) == 5


@pytest.mark.parametrize("caption, message", [
    ("", "caption is empty"),
    ("   \t\n ", "caption is empty"),
    ("😀🎉🚀", "knows none of the caption's words"),
    ("... !!! ;;", "no words"),
    ("\u200b\u200b\u200b", "caption is empty"),
    ("\u200b \u2060\ufeff", "caption is empty"),
])
def test_bad_captions_are_refused(engine, caption, message):
    with pytest.raises(QueryError, match=message):
        engine.search(engine.gallery_ids[0], caption)


def test_long_caption_is_truncated_with_a_note(engine):
    caption = " ".join(["make the red circle large"] * 200)  # 1000 words
    result = engine.search(engine.gallery_ids[0], caption, k=3)
    assert len(result.hits) == 3
    assert any("truncated" in note for note in result.notes)
    assert not engine.search(engine.gallery_ids[0], CAPTION, k=3).notes


def test_partly_unknown_caption_is_accepted_with_a_note(engine):
    result = engine.search(engine.gallery_ids[0], "make it red 😀", k=3)
    assert any("unknown" in note for note in result.notes)



def test_baseline_checkpoint_searches_with_its_own_query_mode(model, shapes_dir, cache_root, tmp_path):
    baseline = cir_core.load_model(f"local-dir:{cir_core.save_model(model, tmp_path / 'same')}")
    baseline.config = dataclasses.replace(baseline.config, query_mode="late_fusion")
    baseline_engine = tiny_engine(cir_core.save_model(baseline, tmp_path / "late-fusion"), shapes_dir, cache_root)
    reference = baseline_engine.gallery_ids[4]
    result = baseline_engine.search(reference, CAPTION, k=3)
    pixels = baseline_engine.transform(load_query_image(baseline_engine.gallery_path(reference))).unsqueeze(0)
    expected = baseline.encode_query(pixels, CAPTION).query[0]
    sprc = model.encode_query(pixels, CAPTION).query[0]
    assert not torch.allclose(expected, sprc, atol=1e-3)  # the modes really differ on this model
    assert np.allclose(result.query_vector, expected.numpy(), atol=TOLERANCE)
    comparison = baseline_engine.compare(reference, CAPTION, k=3)
    assert comparison.rankings[-1].name == "late_fusion"
    assert [h.id for h in comparison.rankings[-1].hits] == [h.id for h in result.hits]
    with pytest.raises(QueryError, match="query mode is 'late_fusion'"):
        baseline_engine.search(reference, CAPTION, k=3, explain=True)


def test_image_prompt_checkpoint_searches_and_explains_its_caption_free_prompt(model, shapes_dir, cache_root,
                                                                              tmp_path):
    variant = cir_core.load_model(f"local-dir:{cir_core.save_model(model, tmp_path / 'same')}")
    variant.config = dataclasses.replace(variant.config, query_mode="image_prompt")
    variant_engine = tiny_engine(cir_core.save_model(variant, tmp_path / "image-prompt"), shapes_dir, cache_root)
    assert variant_engine.model_summary().explainable
    reference = variant_engine.gallery_ids[4]
    pixels = variant_engine.transform(load_query_image(variant_engine.gallery_path(reference))).unsqueeze(0)
    results = [variant_engine.search(reference, caption, k=3, explain=True) for caption in (CAPTION, "remove it")]
    expected = variant.encode_query(pixels, CAPTION)
    assert np.allclose(results[0].query_vector, expected.query[0].numpy(), atol=TOLERANCE)
    first, second = (result.explanation for result in results)
    assert len(first.prompt_tokens) == variant.num_query_tokens
    assert first.prompt_tokens == second.prompt_tokens  # what the prompt says does not depend on the caption
    assert np.array_equal(first.attention.per_token, second.attention.per_token)
    assert not np.allclose(results[0].query_vector, results[1].query_vector, atol=1e-4)


@pytest.mark.parametrize("precision, weights", [("bf16", torch.bfloat16), ("int8", torch.qint8)])
def test_reduced_precision_queries_stay_close_to_fp32_and_explanations_stay_fp32(
        checkpoint, shapes_dir, cache_root, engine, precision, weights):
    fast = tiny_engine(checkpoint, shapes_dir, cache_root, query_precision=precision)
    def query_weight(model):  # a quantized linear layer hands out its weight through a method
        weight = model.qformer.encoder.layer[0].attention.attention.query.weight
        return weight() if callable(weight) else weight

    assert query_weight(fast._query_model).dtype == weights
    assert query_weight(engine.model).dtype == torch.float32  # the fp32 model is untouched
    reference = engine.gallery_ids[3]
    exact, quick = engine.search(reference, CAPTION, k=5), fast.search(reference, CAPTION, k=5)
    assert quick.query_vector.dtype == np.float32
    assert 0.98 < float(np.dot(exact.query_vector, quick.query_vector)) <= 1.0 + 1e-5
    assert not np.array_equal(exact.query_vector, quick.query_vector)  # the reduced copy really ran
    explained, fast_explained = (e.search(reference, CAPTION, k=5, explain=True) for e in (engine, fast))
    np.testing.assert_array_equal(explained.query_vector, fast_explained.query_vector)
    upload = engine.gallery_path(reference)  # a file: its vision features come from the reduced copy too
    encoder, seen = fast._query_model.vision_features, []
    fast._query_model.vision_features = lambda pixels: seen.append(pixels) or encoder(pixels)
    exact_upload, quick_upload = engine.search(upload, CAPTION, k=5), fast.search(upload, CAPTION, k=5)
    assert len(seen) == 1
    assert 0.98 < float(np.dot(exact_upload.query_vector, quick_upload.query_vector)) <= 1.0 + 1e-5


def test_gallery_precision_names_its_own_cached_index(checkpoint, shapes_dir, cache_root, engine):
    int8 = tiny_engine(checkpoint, shapes_dir, cache_root, gallery_precision="int8")
    assert int8.index.info["precision"] == "int8" and engine.index.info["precision"] in ("fp32", "bf16")
    assert f"images (encoded in int8), queries encoded in fp32" in int8.summary()
    folders = sorted(folder.name for folder in (cache_root / "indexes").iterdir())
    assert any(name.endswith("-int8") for name in folders) and len(folders) >= 2
    exact, quick = engine.index.vectors(range(len(engine.index))), int8.index.vectors(range(len(int8.index)))
    assert not np.array_equal(exact, quick)
    np.testing.assert_allclose(quick, exact, atol=0.1)
    with pytest.raises(ValueError, match="gallery precision must be one of auto, fp32, bf16, int8, got 'fp8'"):
        Engine.from_uris(f"local-dir:{checkpoint / 'nothing'}", source=open_source("shapes", shapes_dir),
                         gallery_precision="fp8")


def test_unknown_query_precision_is_refused(checkpoint, shapes_dir, cache_root):
    with pytest.raises(ValueError, match="query precision must be one of auto, fp32, bf16, int8, got 'int4'"):
        tiny_engine(checkpoint, shapes_dir, cache_root, query_precision="int4")


@pytest.mark.parametrize("k", [1.5, float("inf"), float("nan"), None, [3], "many", True, "2.5"])
def test_k_that_is_not_a_whole_number_is_refused(engine, k):
    with pytest.raises(QueryError, match="k must be a whole number"):
        engine.search(engine.gallery_ids[0], CAPTION, k=k)


def test_k_as_whole_float_or_text_is_accepted(engine):
    assert len(engine.search(engine.gallery_ids[0], CAPTION, k=3.0).hits) == 3
    assert len(engine.search(engine.gallery_ids[0], CAPTION, k="4").hits) == 4


# ---------------------------------------------------------------------- nearest captions
def test_explanation_lists_the_captions_nearest_the_query_and_the_prompt(engine, model):
    from cir_core.caption_bank import CaptionBank

    query = engine.benchmark_queries()[0]
    first = engine.search(query.reference_id, query.caption, k=3, explain=True)
    engine.prepare_caption_bank().join(timeout=120)
    assert first.explanation.query_captions is not None or "being encoded" in first.explanation.captions_note
    result = engine.search(query.reference_id, query.caption, k=3, explain=True)
    bank = engine.prompt_views.caption_bank()
    texts, ids = engine.prompt_views.caption_texts()
    assert bank.texts == texts and ids == engine.source.split.gallery  # shapes: every scene's description
    assert engine.gallery_label(ids[0]) == texts[0]
    direct = CaptionBank.build(model, texts, ids, progress=False).nearest(result.query_vector[None])[0]
    found = result.explanation.query_captions
    assert [m.text for m in found] == [m.text for m in direct] and len(found) == 5
    assert [m.similarity for m in found] == pytest.approx([m.similarity for m in direct], abs=1e-5)
    assert [m.similarity for m in found] == sorted((m.similarity for m in found), reverse=True)
    with torch.inference_mode():
        encoding = model.encode_query(engine._gallery_features(query.reference_id), [query.caption])
        prompt_vector = model.prompt_vectors(encoding.prompt)
    assert [m.text for m in result.explanation.prompt_captions] == [m.text for m in bank.nearest(prompt_vector)[0]]
    words = [match.token for matches in result.explanation.prompt_dataset_tokens for match in matches]
    vocabulary = {t for text in texts for t in model.tokenizer.tokenize(text)} | {
        t for q in engine.source.split.triplets for t in model.tokenizer.tokenize(q.caption)}
    assert words and set(words) <= vocabulary


def test_caption_bank_is_cached_and_rebuilt_for_another_model(checkpoint, shapes_dir, cache_root, engine, tmp_path,
                                                              monkeypatch):
    from cir_core.caption_bank import CaptionBank

    expected = engine.prompt_views.caption_bank()
    restarted = tiny_engine(checkpoint, shapes_dir, cache_root)

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the cached caption bank should have been used")

    monkeypatch.setattr(CaptionBank, "build", must_not_encode)
    assert np.array_equal(restarted.prompt_views.caption_bank().vectors, expected.vectors)
    monkeypatch.undo()
    other = tiny_engine(write_image_sensitive_checkpoint(tmp_path / "other", seed=5), shapes_dir, cache_root)
    rebuilt = other.prompt_views.caption_bank()  # same name and texts, other weights: the cached bank is refused
    assert rebuilt.fingerprint != expected.fingerprint and not np.allclose(rebuilt.vectors, expected.vectors)


def test_a_large_vision_encoders_cached_index_stores_its_features(checkpoint, shapes_dir, tmp_path, monkeypatch):
    import cir_core.index_cache as index_cache

    monkeypatch.setattr(index_cache, "has_large_vision_encoder", lambda model: True)  # the tiny model as ViT-g
    large = tiny_engine(checkpoint, shapes_dir, tmp_path / "cache")
    assert large.index.has_vision_features and "vision features stored" in large.summary()
    folder = next((tmp_path / "cache" / "indexes").iterdir())
    assert folder.name.endswith("-vision")
    monkeypatch.undo()
    small = tiny_engine(checkpoint, shapes_dir, tmp_path / "cache")  # the same model as itself: its own index
    assert not small.index.has_vision_features and len(list((tmp_path / "cache" / "indexes").iterdir())) == 2
