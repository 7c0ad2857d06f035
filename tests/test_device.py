"""Device choice (auto / cpu / cuda), fp16 weights for a GPU, and where the engine says it runs."""
import copy

import pytest
import torch

from cir_core.checkpoints import weights_fingerprint
from cir_core.cli import main as cir_main
from cir_core.device import DeviceError, describe_placement, halve_weights, place_model, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_picks_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cuda_without_cuda_is_refused_in_one_line(no_cuda):
    with pytest.raises(DeviceError, match="sees no CUDA device") as error:
        resolve_device("cuda")
    assert "\n" not in str(error.value)
    with pytest.raises(DeviceError, match="must be one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_the_cli_refuses_cuda_without_cuda(no_cuda, tiny_checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    code = cir_main(["build-index", "--images", str(images), "--model", f"local-dir:{tiny_checkpoint}",
                     "--out", str(tmp_path / "index"), "--device", "cuda"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cir build-index: error:") and "no CUDA device" in err and "\n" not in err
    code = cir_main(["eval", "shapes", "--data", str(tmp_path), "--model", f"local-dir:{tiny_checkpoint}",
                     "--device", "cuda"])
    assert code == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_on_the_cpu_the_model_stays_fp32(tiny_model, no_cuda):
    model = copy.deepcopy(tiny_model)
    assert place_model(model, "auto") is model
    assert all(p.dtype == torch.float32 for p in model.parameters()) and model.autocast_dtype is None
    torch.set_num_threads(1)
    assert describe_placement(model) == "on CPU, 1 thread"


def test_halved_weights_keep_norms_fp32_and_queries_close(tiny_model):
    """The GPU layout (fp16 linear and convolution weights under autocast), run here on the CPU."""
    model = halve_weights(copy.deepcopy(tiny_model))
    linear = model.vision_model.encoder.layers[0].mlp.fc1
    assert linear.weight.dtype == torch.float16
    assert model.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16
    assert model.vision_model.post_layernorm.weight.dtype == torch.float32
    assert model.query_tokens.dtype == torch.float32
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exact = tiny_model.encode_query(pixels, ["make it red", "remove the circle"]).query
    halved = model.encode_query(pixels, ["make it red", "remove the circle"]).query
    assert halved.shape == exact.shape
    torch.testing.assert_close(halved.float(), exact, atol=2e-2, rtol=0)
    torch.testing.assert_close(model.encode_target(pixels).float(), tiny_model.encode_target(pixels), atol=2e-2, rtol=0)


def test_a_halved_model_keeps_its_full_precision_fingerprint(tiny_model):
    model = copy.deepcopy(tiny_model)
    fingerprint = weights_fingerprint(model)
    model.source_fingerprint = fingerprint  # what place_model records before halving on a GPU
    halve_weights(model)
    assert weights_fingerprint(model) == fingerprint
    assert weights_fingerprint(halve_weights(copy.deepcopy(tiny_model))) != fingerprint
