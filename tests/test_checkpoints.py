import time

import pytest
import torch

import cir_core
from cir_core.checkpoints import CheckpointError


def test_save_load_bit_identical(tiny_model, tiny_checkpoint):
    loaded = cir_core.load_model(f"local-dir:{tiny_checkpoint}")
    pixels = torch.randn(2, 3, 32, 32)
    captions = ["make it red", "remove the circle"]
    assert torch.equal(loaded.encode_query(pixels, captions).query, tiny_model.encode_query(pixels, captions).query)
    assert torch.equal(loaded.encode_target(pixels), tiny_model.encode_target(pixels))
    assert loaded.config == tiny_model.config


def test_offline_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        cir_core.load_model("hf-hub:someone/sprc-model@main")
    assert time.monotonic() - start < 5


def test_unknown_scheme_and_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="unknown model source"):
        cir_core.load_model("s3://bucket/model")
    with pytest.raises(CheckpointError, match="does not exist"):
        cir_core.load_model(f"local-dir:{tmp_path / 'nothing'}")


def test_folder_without_tokenizer(tiny_checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        cir_core.load_model(broken)


def test_tiny_vocab_is_refused(tiny_checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "tiny-vocab"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(CheckpointError, match="only 5 entries"):
        cir_core.load_model(broken)


def test_truncated_weights(tiny_checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "truncated"
    shutil.copytree(tiny_checkpoint, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        cir_core.load_model(broken)


def test_weights_of_another_size(tiny_checkpoint, tmp_path):
    import json
    import shutil

    broken = tmp_path / "other-config"
    shutil.copytree(tiny_checkpoint, broken)
    config = json.loads((broken / "config.json").read_text())
    config["embed_dim"] = 24
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        cir_core.load_model(broken)


def test_config_with_unknown_keys(tiny_checkpoint, tmp_path):
    import json
    import shutil

    broken = tmp_path / "bad-config"
    shutil.copytree(tiny_checkpoint, broken)
    config = json.loads((broken / "config.json").read_text())
    config["vision"]["depth"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown keys"):
        cir_core.load_model(broken)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        cir_core.load_preset("blip2-vitxxl")
