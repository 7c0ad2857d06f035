"""The "image_prompt" query mode: SPRC's two passes with a prompt that never reads the caption."""
import copy
import dataclasses

import pytest
import torch

import cir_core
from cir_core.config import PROMPT_MODES, QUERY_MODES
from cir_core.model import _prefixed_mask

CAPTIONS = ["make the red cube large", "walk around to the other side of the table"]
OTHER_CAPTIONS = ["remove it", "look from higher up and add a small green matte sphere"]


def images(n, seed):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def in_mode(model, mode):
    """The same weights under another query mode."""
    variant = copy.copy(model)
    variant.config = dataclasses.replace(model.config, query_mode=mode)
    return variant


def test_the_mode_is_known_and_has_a_prompt():
    assert "image_prompt" in QUERY_MODES and "image_prompt" in PROMPT_MODES
    model = cir_core.create_model("tiny-test", query_mode="image_prompt")
    assert model.config.query_mode == "image_prompt"
    assert {name for name, _ in model.named_parameters()} == {
        name for name, _ in cir_core.create_model("tiny-test").named_parameters()}  # SPRC's parameters, no more


def test_the_caption_cannot_change_the_prompt(tiny_model):
    model = in_mode(tiny_model, "image_prompt")
    pixels = images(2, seed=1)
    first = model.encode_query(pixels, CAPTIONS)
    second = model.encode_query(pixels, OTHER_CAPTIONS)
    assert torch.equal(first.prompt, second.prompt)
    assert not torch.allclose(first.query, second.query, atol=1e-4)  # the compose pass still reads the caption
    assert not torch.allclose(first.prompt, model.encode_query(images(2, seed=2), CAPTIONS).prompt, atol=1e-4)
    sprc = in_mode(tiny_model, "sprc")  # the same weights do let SPRC's prompt read the caption
    assert not torch.allclose(sprc.encode_query(pixels, CAPTIONS).prompt,
                              sprc.encode_query(pixels, OTHER_CAPTIONS).prompt, atol=1e-4)


def test_the_prompt_is_sprcs_prompt_pass_with_the_caption_masked_out(tiny_model):
    """Computed the other way: SPRC's prompt pass over [queries ; caption] with every caption position
    hidden from attention gives the image prompt."""
    model = in_mode(tiny_model, "image_prompt")
    pixels = images(2, seed=3)
    text = model.tokenize(CAPTIONS)
    features = model.vision_features(pixels)
    queries = model.query_tokens.expand(2, -1, -1)
    embeds = model.embeddings(input_ids=text.input_ids, query_embeds=queries)
    hidden_caption = _prefixed_mask(torch.zeros_like(text.attention_mask), model.num_query_tokens)
    with torch.no_grad():
        masked = model.qformer(query_embeds=embeds, query_length=model.num_query_tokens, attention_mask=hidden_caption,
                               encoder_hidden_states=features).last_hidden_state[:, :model.num_query_tokens]
    assert torch.allclose(model.encode_query(pixels, CAPTIONS).prompt, masked, atol=1e-5)


def test_everything_after_the_prompt_is_sprcs(tiny_model):
    model, sprc = in_mode(tiny_model, "image_prompt"), in_mode(tiny_model, "sprc")
    pixels = images(2, seed=4)
    text = model.tokenize(CAPTIONS)
    encoding = model.encode_query(pixels, text, output_attentions=True)
    with torch.no_grad():
        assert torch.equal(encoding.query, sprc.compose(encoding.prompt, text))
    config = tiny_model.config.qformer
    layers = (config.num_hidden_layers + 1) // config.cross_attention_frequency
    assert len(encoding.cross_attentions) == layers  # where the prompt looks, as for SPRC
    assert encoding.cross_attentions[0].shape == (2, config.num_attention_heads, model.num_query_tokens,
                                                  tiny_model.config.vision.num_tokens)


def test_the_losses_are_sprcs_terms_on_the_image_prompt():
    torch.manual_seed(5)
    sprc = cir_core.create_model("tiny-test", **{"loss.rtc_weight": 0.5, "loss.align_weight": 2.0}).eval()
    model = in_mode(sprc, "image_prompt")
    reference, target = images(3, seed=6), images(3, seed=7)
    captions = CAPTIONS + ["add a blue cone behind the cube"]
    text = model.tokenize(captions)
    with torch.no_grad():
        out, sprc_out = model(reference, captions, target), sprc(reference, captions, target)
        targets = model.target_vectors(model.vision_features(target))  # (3, Q, D)
        prompt = model.query_states(model.vision_features(reference))  # the reference alone
        query = sprc.compose(prompt, text)
        logits = torch.einsum("bd,nqd->bnq", query, targets).amax(-1) / model.temp  # max over each target's Q
        itc = torch.nn.functional.cross_entropy(logits, torch.arange(3))
        align = ((prompt.mean(dim=1) - model.prompt_tokens.mean(dim=1)) ** 2).mean()
    assert float(out.itc) == pytest.approx(float(itc), rel=1e-4)
    assert float(out.rtc) == pytest.approx(float(sprc_out.rtc), rel=1e-6)  # the caption-only term, as SPRC's
    assert float(out.rtc) > 0 and float(out.align) == pytest.approx(float(align), rel=1e-4)
    assert float(out.loss) == pytest.approx(float(itc) + 0.5 * float(out.rtc) + 2.0 * float(align), rel=1e-4)


def test_training_reaches_the_queries_through_the_prompt():
    model = cir_core.create_model("tiny-test", query_mode="image_prompt")
    out = model(images(2, seed=8), CAPTIONS, images(2, seed=9))
    out.loss.backward()
    for name in ("query_tokens", "prompt_tokens", "temp"):
        assert getattr(model, name).grad is not None and getattr(model, name).grad.abs().sum() > 0, name
    assert model.text_projection.weight.grad.abs().sum() > 0
