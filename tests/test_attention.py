"""Fused attention for calls without maps, eager for calls with maps and for training, per call."""
import copy
import threading

import pytest
import torch
from transformers.masking_utils import bidirectional_mask_function

import cir_core
from cir_core import attention
from cir_core.config import apply_overrides, load_preset
from cir_core.model import SPRCModel

CAPTIONS = ["make it red", "add a blue square in the corner and remove the small circle"]


def images(n, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def eager_only(model):
    """An independent reference: a copy whose every call runs transformers' own eager attention."""
    reference = copy.deepcopy(model)
    reference.vision_model.config._attn_implementation = "eager"
    reference.qformer.config._attn_implementation = "eager"
    return reference


@pytest.fixture
def calls(monkeypatch):
    """Which attention function ran, per call: ("sdpa" | "eager", the attention module's class)."""
    seen = []
    for name in ("sdpa", "eager"):
        original = getattr(attention, f"{name}_attention_forward")

        def spy(module, *args, _name=name, _original=original, **kwargs):
            seen.append((_name, type(module)))
            return _original(module, *args, **kwargs)

        monkeypatch.setattr(attention, f"{name}_attention_forward", spy)
    return seen


def test_queries_and_targets_without_maps_run_fused_and_equal_eager(tiny_model, calls):
    reference = eager_only(tiny_model)
    pixels = images(2, seed=1)
    fused = tiny_model.encode_query(pixels, CAPTIONS)  # two caption lengths: the short one is padded
    assert calls and {name for name, _ in calls} == {"sdpa"}
    exact = reference.encode_query(pixels, CAPTIONS)
    assert torch.allclose(fused.query, exact.query, atol=1e-5)
    assert torch.allclose(fused.prompt, exact.prompt, atol=1e-5)
    assert torch.allclose(tiny_model.encode_target(pixels), reference.encode_target(pixels), atol=1e-5)


def test_rankings_of_the_fused_path_equal_eager_on_a_gallery(tiny_model):
    reference = eager_only(tiny_model)
    gallery = images(40, seed=2)
    references, captions = images(8, seed=3), [CAPTIONS[i % 2] for i in range(8)]
    scores = {}
    for name, model in (("fused", tiny_model), ("eager", reference)):
        query = model.encode_query(references, captions).query
        scores[name] = model.score(query, model.encode_target(gallery))  # (8, 40)
    assert torch.allclose(scores["fused"], scores["eager"], atol=1e-5)
    # A random model's scores nearly tie (within 1e-4), so orders within the top 10 may swap: the
    # agreement asked of the fused path is the same first result and top-10 overlap >= 0.99.
    assert torch.equal(scores["fused"].argmax(dim=1), scores["eager"].argmax(dim=1))
    overlaps = [len(set(a.tolist()) & set(b.tolist())) / 10
                for a, b in zip(scores["fused"].topk(10).indices, scores["eager"].topk(10).indices)]
    assert sum(overlaps) / len(overlaps) >= 0.99


def test_calls_asking_for_maps_run_eager_on_the_same_model_and_get_eager_maps(tiny_model, calls):
    pixels = images(2, seed=4)
    with torch.inference_mode():
        features = tiny_model.vision_features(pixels)
        calls.clear()
        tiny_model.sentence_prompt(features, tiny_model.tokenize(CAPTIONS), output_attentions=True)
    assert calls and {name for name, kind in calls} == {"eager"}  # the pass whose maps are read
    with_maps = tiny_model.encode_query(pixels, CAPTIONS, output_attentions=True)
    exact = eager_only(tiny_model).encode_query(pixels, CAPTIONS, output_attentions=True)
    assert len(with_maps.cross_attentions) == len(exact.cross_attentions) >= 1
    for fused_map, eager_map in zip(with_maps.cross_attentions, exact.cross_attentions):
        assert torch.allclose(fused_map, eager_map, atol=1e-6)
        assert torch.allclose(fused_map.sum(-1), torch.ones(()), atol=1e-5)


def test_concurrent_calls_with_and_without_maps_each_get_their_own_path(tiny_model):
    pixels = images(1, seed=5)
    expected = tiny_model.encode_query(pixels, CAPTIONS[1], output_attentions=True)
    problems = []

    def ask(with_maps: bool):
        for _ in range(15):
            encoding = tiny_model.encode_query(pixels, CAPTIONS[1], output_attentions=with_maps)
            if with_maps and not (encoding.cross_attentions and torch.allclose(
                    encoding.cross_attentions[0], expected.cross_attentions[0], atol=1e-6)):
                problems.append("maps missing or wrong")
            if not torch.allclose(encoding.query, expected.query, atol=1e-5):
                problems.append("query differs")

    threads = [threading.Thread(target=ask, args=(with_maps,)) for with_maps in (True, False, True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []


@pytest.mark.parametrize("trained", ["eager", "sdpa"])
def test_grad_enabled_calls_run_the_configured_attention(trained, calls):
    torch.manual_seed(0)
    model = SPRCModel(apply_overrides(load_preset("tiny-test"), {"attn_implementation": trained})).eval()
    model(images(2, seed=6), CAPTIONS, images(2, seed=7)).loss.backward()
    assert calls and {name for name, _ in calls} == {trained}
    calls.clear()
    with torch.no_grad():
        model.encode_target(images(2, seed=6))
    assert {name for name, _ in calls} == {"sdpa"}


def test_the_choice_follows_the_measurements(tiny_model, calls):
    assert attention.fused_is_faster(torch.zeros(1, 4, 5, 8))  # fp32, as int8 copies compute attention too
    assert not attention.fused_is_faster(torch.zeros(64, 4, 5, 8, dtype=torch.bfloat16))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # gallery precision bf16
        tiny_model.encode_target(images(3, seed=8))
    assert calls and {name for name, _ in calls} == {"eager"}


def test_a_mask_without_padding_is_dropped_except_while_a_cuda_graph_is_captured(monkeypatch):
    arguments = dict(batch_size=1, q_length=3, kv_length=3, mask_function=bidirectional_mask_function,
                     attention_mask=torch.ones(1, 3, dtype=torch.bool), allow_is_bidirectional_skip=True)
    assert attention._additive_mask(**arguments) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    captured = attention._additive_mask(**arguments)
    assert captured.shape == (1, 1, 3, 3) and not captured.any()  # all visible: zeros to add
    padded = attention._additive_mask(**{**arguments, "attention_mask": torch.tensor([[True, True, False]])})
    assert (padded[..., 2] == torch.finfo(torch.float32).min).all() and not padded[..., :2].any()


def test_an_unknown_attention_is_one_clear_error(tiny_model):
    with pytest.raises(ValueError, match="attention must be one of eager, sdpa, got 'flash'"):
        copy.deepcopy(tiny_model).set_attn_implementation("flash")
    with pytest.raises(ValueError, match="attn_implementation"):
        cir_core.create_model("tiny-test", attn_implementation="flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_fp16_queries_run_fused_and_rank_as_eager(tiny_model, calls):
    from cir_core.device import place_model

    placed = place_model(copy.deepcopy(tiny_model), "cuda")
    reference = eager_only(placed)
    gallery, references = images(40, seed=9).cuda(), images(8, seed=10).cuda()
    captions = [CAPTIONS[i % 2] for i in range(8)]
    calls.clear()
    fused = placed.score(placed.encode_query(references, captions).query, placed.encode_target(gallery))
    assert calls and {name for name, _ in calls} == {"sdpa"}
    exact = reference.score(reference.encode_query(references, captions).query, reference.encode_target(gallery))
    assert torch.allclose(fused, exact, atol=5e-3)


def test_eager_attention_forces_eager_in_its_block_and_thread_only(tiny_model, calls):
    pixels = images(1, seed=4)
    with attention.eager_attention():
        inside = tiny_model.encode_query(pixels, CAPTIONS[:1]).query
    assert calls and {name for name, _ in calls} == {"eager"}
    calls.clear()
    with attention.eager_attention():  # another thread is not forced
        other = threading.Thread(target=lambda: tiny_model.encode_target(pixels))
        other.start()
        other.join()
    assert calls and {name for name, _ in calls} == {"sdpa"}
    calls.clear()
    after = tiny_model.encode_query(pixels, CAPTIONS[:1]).query  # the block is over
    assert calls and {name for name, _ in calls} == {"sdpa"}
    assert torch.allclose(inside, after, atol=1e-5)
