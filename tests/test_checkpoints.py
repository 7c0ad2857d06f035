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


def _checkpoint_with_config(source, folder, edit) -> "Path":
    import json
    import shutil

    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("section, key, bad, message", [
    ("vision", "num_attention_heads", 0, "vision.num_attention_heads must be a whole number >= 1"),
    ("qformer", "num_attention_heads", 0, "qformer.num_attention_heads must be a whole number >= 1"),
    ("vision", "patch_size", 0, "vision.patch_size must be a whole number >= 1"),
    ("qformer", "cross_attention_frequency", 0, "qformer.cross_attention_frequency must be"),
    ("vision", "hidden_act", "swishy", "vision.hidden_act must be one of"),
    ("qformer", "hidden_act", "swishy", "qformer.hidden_act must be one of"),
    ("vision", "hidden_size", -32, "vision.hidden_size must be a whole number >= 1"),
    ("qformer", "intermediate_size", -1, "qformer.intermediate_size must be"),
    (None, "embed_dim", -16, "embed_dim must be a whole number >= 1"),
    ("preprocess", "mean", [0.5, 0.5], "preprocess.mean must be 3 finite numbers"),
    ("preprocess", "mean", ["a", "b", "c"], "preprocess.mean must be 3 finite numbers"),
    ("preprocess", "std", [0, 0, 0], "preprocess.std must be 3 positive finite numbers"),
    ("preprocess", "std", "abc", "preprocess.std must be 3 positive finite numbers"),
    ("preprocess", "target_pad_ratio", float("nan"), "preprocess.target_pad_ratio must be a finite number >= 1"),
    ("preprocess", "target_pad_ratio", -1.25, "preprocess.target_pad_ratio must be a finite number >= 1"),
    ("preprocess", "resample", "cubic", "preprocess.resample must be one of"),
    ("vision", "layer_norm_eps", -1e-6, "vision.layer_norm_eps must be a finite number > 0"),
    ("qformer", "layer_norm_eps", 0.0, "qformer.layer_norm_eps must be a finite number > 0"),
    ("vision", "ln_vision_eps", float("inf"), "vision.ln_vision_eps must be a finite number > 0"),
    ("qformer", "hidden_dropout_prob", 1.0, "qformer.hidden_dropout_prob must be a finite number >= 0 and < 1"),
    ("loss", "itc_weight", float("nan"), "loss.itc_weight must be a finite number >= 0"),
    ("loss", "rtc_weight", -0.4, "loss.rtc_weight must be a finite number >= 0"),
    (None, "temp_init", 0.0, "temp_init must be a finite number > 0"),
    ("preprocess", "max_caption_words", 0, "preprocess.max_caption_words must be a whole number >= 1"),
    ("qformer", "num_query_tokens", 0, "qformer.num_query_tokens must be a whole number >= 1"),
])
def test_config_fields_out_of_range_are_refused_at_load(tiny_checkpoint, tmp_path, section, key, bad, message):
    def edit(config):
        (config[section] if section else config)[key] = bad

    folder = _checkpoint_with_config(tiny_checkpoint, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=f"invalid model config 'tiny-test': {message}") as caught:
        cir_core.load_model(folder)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("key", ["vision.num_hidden_layers", "qformer.num_hidden_layers"])
def test_a_million_layers_is_refused_before_anything_is_built(tiny_checkpoint, tmp_path, key):
    section, name = key.split(".")
    folder = _checkpoint_with_config(tiny_checkpoint, tmp_path / "deep",
                                     lambda config: config[section].__setitem__(name, 1_000_000))
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=f"{key} must be a whole number between 1 and 256"):
        cir_core.load_model(folder)
    assert time.monotonic() - start < 5


def test_a_config_too_large_to_build_is_refused_with_its_size(tiny_checkpoint, tmp_path):
    def edit(config):
        # 1.6 * 10^12 patches of 8 pixels: a position table of 200 TB
        config["vision"]["image_size"] = config["preprocess"]["image_size"] = 10_000_000

    folder = _checkpoint_with_config(tiny_checkpoint, tmp_path / "huge", edit)
    with pytest.raises(CheckpointError, match="parameters, more than the 5,000,000,000 this code builds"):
        cir_core.load_model(folder)


def test_estimated_parameters_match_the_built_models():
    from cir_core.config import apply_overrides, estimated_parameters, load_preset

    for preset in ("tiny-test", "shapes-mini"):
        for mode in ("sprc", "pseudo_word"):
            config = apply_overrides(load_preset(preset), {"query_mode": mode})
            built = sum(p.numel() for p in cir_core.SPRCModel(config).parameters())
            assert abs(estimated_parameters(config) - built) <= 0.001 * built


def test_a_config_nested_100k_levels_deep_is_one_line_error(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "nested"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "config.json").write_text('{"vision": ' * 100_000 + "{}" + "}" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        cir_core.load_model(folder)


def test_checkpoint_loader_fuzz_gives_one_line_errors(tiny_checkpoint, tmp_path):
    """Seeded random corruptions of a checkpoint folder: each loads or fails with one CheckpointError line."""
    import json
    import random
    import shutil

    rng = random.Random(22)
    junk = [-1, 0, 1.5, 1e9, float("nan"), float("inf"), "x", "", None, True, [], [1, 2, 3], {}, {"a": 1}]
    original = json.loads((tiny_checkpoint / "config.json").read_text())
    failures = 0
    for trial in range(40):
        folder = tmp_path / f"trial{trial}"
        shutil.copytree(tiny_checkpoint, folder)
        how = rng.choice(["config_value", "config_bytes", "weights_truncated", "weights_bytes", "vocab_bytes"])
        if how == "config_value":
            config = json.loads(json.dumps(original))
            section = rng.choice([None, "vision", "qformer", "preprocess", "loss"])
            node = config[section] if section else config
            node[rng.choice(sorted(node))] = rng.choice(junk)
            (folder / "config.json").write_text(json.dumps(config))
        else:
            name = {"config_bytes": "config.json", "vocab_bytes": "vocab.txt"}.get(how, "model.safetensors")
            data = bytearray((folder / name).read_bytes())
            if how == "weights_truncated":
                data = data[:rng.randrange(len(data))]
            else:
                for _ in range(rng.randint(1, 8)):
                    data[rng.randrange(min(len(data), 4096))] = rng.randrange(256)
            (folder / name).write_bytes(bytes(data))
        try:
            cir_core.load_model(folder)
        except CheckpointError as error:
            failures += 1
            assert str(error) and "\n" not in str(error), (how, str(error))
    assert failures >= 20
