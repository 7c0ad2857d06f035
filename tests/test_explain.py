"""Explanations: nearest tokens, cross-attention maps, result relevance, overlays."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir_core.config import PreprocessConfig
from cir_core.explain import (
    Vocabulary,
    attention_maps,
    grid_side,
    patch_attention,
    result_relevance,
)
from cir_core.transforms import ImageTransform
from cir_core.word_filter import BLOCKED_DIGESTS, word_digest

SPECIAL = re.compile(r"^\[(PAD|CLS|SEP|MASK|UNK|DEC|unused\d+)\]$")


@pytest.fixture(scope="module")
def vocabulary(tiny_model):
    return Vocabulary(tiny_model)


@pytest.fixture(scope="module")
def query(tiny_model):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    return tiny_model.encode_query(pixels, ["make it red", "add a blue square"], output_attentions=True)


def brute_force_top3(model, vector):
    """Independent reference: cosine to every row, special/unused entries dropped afterwards."""
    table = model.embeddings.word_embeddings.weight.detach()
    similarity = F.cosine_similarity(vector[None, :], table, dim=-1)
    tokens = model.tokenizer.convert_ids_to_tokens(list(range(table.shape[0])))
    order = torch.argsort(similarity, descending=True).tolist()
    kept = [(tokens[i], float(similarity[i])) for i in order if not SPECIAL.match(tokens[i])
            and word_digest(tokens[i]) not in BLOCKED_DIGESTS]
    return kept[:3]


def test_vocabulary_drops_special_and_unused_tokens(vocabulary):
    assert not [t for t in vocabulary.tokens if SPECIAL.match(t)]
    assert "red" in vocabulary.tokens and "##s" in vocabulary.tokens
    assert len(vocabulary.tokens) == vocabulary.unit_embeddings.shape[0]


def test_nearest_tokens_match_brute_force(tiny_model, vocabulary, query):
    prompt = query.prompt[0]  # (Q, H)
    decoded = vocabulary.nearest(prompt, top=3)
    assert len(decoded) == tiny_model.num_query_tokens
    for vector, matches in zip(prompt, decoded):
        expected = brute_force_top3(tiny_model, vector)
        assert [m.token for m in matches] == [token for token, _ in expected]
        assert [m.similarity for m in matches] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_nearest_tokens_never_return_special_tokens_even_when_closest(tiny_model, vocabulary):
    pad_vector = tiny_model.embeddings.word_embeddings.weight[tiny_model.tokenizer.pad_token_id].detach()
    matches = vocabulary.nearest(pad_vector[None], top=3)[0]
    assert all(not SPECIAL.match(m.token) for m in matches)
    assert matches[0].similarity < 0.999  # the [PAD] row itself (similarity 1) was skipped


def test_no_vocabulary_holds_a_blocked_word_even_for_its_own_embedding(tiny_model, vocabulary):
    tokens = tiny_model.tokenizer.convert_ids_to_tokens(list(range(len(tiny_model.tokenizer))))
    blocked = [i for i, token in enumerate(tokens) if word_digest(token) in BLOCKED_DIGESTS]
    # entries of bert-base-uncased (words and ## pieces) the curated list blocks (pinned: an edit of the list shows)
    assert len(blocked) == 43
    table = tiny_model.embeddings.word_embeddings.weight.detach()
    restricted = Vocabulary(tiny_model, restrict_to={tokens[i] for i in blocked} | {"red", "cube"})
    for vocab in (vocabulary, restricted):
        assert not {tokens[i] for i in blocked} & set(vocab.tokens)
        for row in vocab.nearest(table[blocked], top=3):  # each blocked word's own vector
            assert all(word_digest(match.token) not in BLOCKED_DIGESTS for match in row)
    assert sorted(restricted.tokens) == ["cube", "red"]


def test_auxiliary_prompt_decodes_like_any_prompt(tiny_model, vocabulary):
    decoded = vocabulary.nearest(tiny_model.prompt_tokens[0])
    assert len(decoded) == tiny_model.num_query_tokens and all(len(row) == 3 for row in decoded)
    assert all(row[0].similarity >= row[1].similarity >= row[2].similarity for row in decoded)


def test_nearest_refuses_wrong_width(vocabulary):
    with pytest.raises(ValueError, match="expected"):
        vocabulary.nearest(torch.zeros(4, 7))


def test_attention_rows_sum_to_one_and_maps_have_the_patch_grid(tiny_model, query):
    raw = patch_attention(query.cross_attentions, batch_index=1)  # (Q, T)
    num_tokens = tiny_model.config.vision.num_tokens
    assert raw.shape == (tiny_model.num_query_tokens, num_tokens)
    assert raw.sum(dim=1) == pytest.approx(torch.ones(raw.shape[0]), abs=1e-5)
    maps = attention_maps(query.cross_attentions, batch_index=1)
    side = 32 // 8
    assert maps.per_token.shape == (tiny_model.num_query_tokens, side, side)
    assert maps.average.shape == (side, side)
    assert maps.per_token.min() >= 0 and maps.per_token.max() == pytest.approx(1.0)
    assert maps.average.max() == pytest.approx(1.0)
    # class token + patches = 1, and the per-token map keeps the patch ordering of the raw attention
    assert maps.patch_share + raw[:, 0].numpy() == pytest.approx(np.ones(raw.shape[0]), abs=1e-5)
    for token in range(raw.shape[0]):
        assert np.argmax(maps.per_token[token]) == int(raw[token, 1:].argmax())


def test_attention_maps_need_attentions():
    with pytest.raises(ValueError, match="output_attentions"):
        attention_maps(())


def test_grid_side_refuses_non_square_token_counts():
    assert grid_side(17) == 4
    with pytest.raises(ValueError, match="square"):
        grid_side(18)


def test_relevance_map_is_finite_shaped_and_explains_the_real_score(tiny_model, query):
    torch.manual_seed(2)
    encoding = tiny_model.encode_images(torch.randn(1, 3, 32, 32))  # inference tensors, as the engine caches them
    relevance = result_relevance(tiny_model, query.query[0], encoding.vision_features[0])
    assert relevance.grid.shape == (4, 4)
    assert np.isfinite(relevance.grid).all() and relevance.grid.min() >= 0 and relevance.grid.max() <= 1
    expected = float(tiny_model.score(query.query[:1], encoding.targets)[0, 0])
    assert relevance.score == pytest.approx(expected, abs=1e-5)
    assert all(p.grad is None for p in tiny_model.parameters())  # no parameter gradients left behind


def test_relevance_depends_on_the_query(tiny_model, query):
    torch.manual_seed(3)
    features = tiny_model.encode_images(torch.randn(1, 3, 32, 32)).vision_features[0]
    first = result_relevance(tiny_model, query.query[0], features)
    second = result_relevance(tiny_model, query.query[1], features)
    assert not np.allclose(first.grid, second.grid)


def test_heatmap_overlay_draws_map_and_colour_bar():
    transform = ImageTransform(PreprocessConfig(image_size=32))
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[0, 0] = 1.0
    from demo.render import heatmap_overlay

    image = Image.new("RGB", (64, 48), (128, 128, 128))
    overlay = heatmap_overlay(transform.resize_and_crop(image), heat, title="test", display_size=128)
    pixels = np.asarray(overlay)
    assert overlay.mode == "RGB" and pixels.shape[0] > 128 and pixels.shape[1] > 128 + 14
    top_left = pixels[30, 10].astype(int)  # hot corner: bright
    bottom_right = pixels[140, 120].astype(int)  # cold corner: darker than the grey image
    assert top_left.sum() > bottom_right.sum() + 100
    with pytest.raises(ValueError, match="2-D"):
        heatmap_overlay(image, np.zeros(4))
