"""Query precision "auto" and the int8 copy's memory: shared fp32 tensors, an untouched original."""
import pytest
import torch

from cir_core import precision
from cir_core.precision import int8_copy, query_model, resolve_query_precision


def test_auto_is_int8_only_for_a_large_vision_encoder_on_a_cpu(tiny_model, monkeypatch):
    assert resolve_query_precision(tiny_model, "auto") == "fp32"
    assert query_model(tiny_model, "auto") is tiny_model
    monkeypatch.setattr(precision, "LARGE_VISION_ENCODER", 1)  # tiny's encoder counts as large
    assert resolve_query_precision(tiny_model, "auto") == "int8"
    assert resolve_query_precision(tiny_model, "bf16") == "bf16"
    with pytest.raises(ValueError, match="query precision must be one of"):
        resolve_query_precision(tiny_model, "int4")


def test_the_int8_copy_shares_the_fp32_tensors_it_does_not_quantize(tiny_model):
    before = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    fast = int8_copy(tiny_model)
    assert fast.vision_model.post_layernorm.weight is tiny_model.vision_model.post_layernorm.weight
    assert fast.embeddings.word_embeddings.weight is tiny_model.embeddings.word_embeddings.weight
    assert fast.query_tokens is tiny_model.query_tokens
    assert type(tiny_model.vision_model.encoder.layers[0].mlp.fc1) is torch.nn.Linear
    assert type(fast.vision_model.encoder.layers[0].mlp.fc1) is not torch.nn.Linear
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast.encode_query(pixels, "make it red").query,
                               tiny_model.encode_query(pixels, "make it red").query, atol=5e-2, rtol=0)


def test_the_bf16_copy_converts_every_floating_point_tensor_and_leaves_the_original(tiny_model):
    fast = query_model(tiny_model, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    assert all(b.dtype in (torch.bfloat16, torch.int64) for b in fast.buffers())
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    assert fast.query_tokens is not tiny_model.query_tokens and fast.query_tokens.requires_grad
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast.encode_query(pixels, "make it red").query.float(),
                               tiny_model.encode_query(pixels, "make it red").query, atol=5e-2, rtol=0)
