"""Import of official weights: LAVIS/SPRC pickles and transformers BLIP-2 folders.

The parity test writes a random state dict with the exact official LAVIS key names, converts
it through the `cir convert` command, and compares the loaded model with an independent
plain-torch implementation working directly on the LAVIS-named tensors (tests/lavis_reference.py).
"""
import argparse
import json

import pytest
import torch
from lavis_reference import LavisReference, random_lavis_state_dict
from safetensors.torch import save_file

import cir_core
from cir_core.cli import main as cir_main
from cir_core.config import load_preset
from cir_core.convert import ConversionError, convert_lavis, convert_transformers_blip2, load_lavis_checkpoint

PRESET = "tiny-test"
CAPTIONS = ["make it red", "Remove the lemon; add two much longer yellow stripes across the whole left side of it"]


@pytest.fixture(scope="module")
def config():
    return load_preset(PRESET)


@pytest.fixture(scope="module")
def lavis_state(config):
    return random_lavis_state_dict(config, std=0.2, seed=1)


@pytest.fixture(scope="module")
def lavis_file(tmp_path_factory, lavis_state):
    path = tmp_path_factory.mktemp("lavis") / "sprc_tiny.pt"
    torch.save({"epoch": 3, "Blip2QformerCirAlignPrompt": lavis_state}, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, lavis_file):
    """The LAVIS file converted with `cir convert`, and what the command printed."""
    out = tmp_path_factory.mktemp("converted") / "sprc"
    return out, cir_main(["convert", "--from-lavis", str(lavis_file), "--preset", PRESET, "--out", str(out)])


def test_lavis_conversion_matches_independent_reference(converted, lavis_state, config):
    out, code = converted
    assert code == 0
    model = cir_core.load_model(f"local-dir:{out}")
    reference = LavisReference(lavis_state, config)
    torch.manual_seed(0)
    references, gallery = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    text = model.tokenize(CAPTIONS)
    assert text.attention_mask.sum(1).tolist()[0] < text.input_ids.shape[1]  # padding is exercised

    query = model.encode_query(references, text).query
    expected_query = reference.composed_query(references, text.input_ids, text.attention_mask)
    targets = model.encode_target(gallery)
    expected_targets = reference.target_vectors(gallery)
    with torch.no_grad():
        auxiliary = model.auxiliary_query(text)
    expected_auxiliary = reference.auxiliary_query(text.input_ids, text.attention_mask)

    torch.testing.assert_close(query, expected_query, atol=1e-5, rtol=0)
    torch.testing.assert_close(targets, expected_targets, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score(query, targets), reference.scores(expected_query, expected_targets),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(auxiliary, expected_auxiliary, atol=1e-5, rtol=0)
    # Non-trivial numbers: distinct queries, distinct scores, and the learned temperature carried over.
    assert (expected_query[0] - expected_query[1]).abs().max() > 0.1
    assert reference.scores(expected_query, expected_targets).std() > 0.01
    assert model.temp.item() == pytest.approx(0.07)


def test_lavis_tensors_land_unchanged(converted, lavis_state):
    ours = cir_core.load_model(f"local-dir:{converted[0]}").state_dict()
    fused = torch.cat([lavis_state["visual_encoder.blocks.1.attn.q_bias"], torch.zeros(32, dtype=torch.float16),
                       lavis_state["visual_encoder.blocks.1.attn.v_bias"]]).float()
    assert torch.equal(ours["vision_model.encoder.layers.1.self_attn.qkv.bias"], fused)
    assert torch.equal(ours["vision_model.embeddings.patch_embedding.weight"],
                       lavis_state["visual_encoder.patch_embed.proj.weight"].float())  # fp16 ViT upcast exactly
    assert torch.equal(ours["qformer.encoder.layer.0.crossattention.attention.key.weight"],
                       lavis_state["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"])
    assert torch.equal(ours["qformer.layernorm.bias"], lavis_state["Qformer.bert.embeddings.LayerNorm.bias"])
    assert torch.equal(ours["prompt_tokens"], lavis_state["prompt_tokens"])


def test_cli_prints_dropped_keys(lavis_file, tmp_path, capsys):
    out = tmp_path / "printed"
    assert cir_main(["convert", "--from-lavis", str(lavis_file), "--preset", PRESET, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropped (unused): 10" in printed
    for key in ("Qformer.cls.predictions.decoder.weight", "itm_head.weight", "Qformer.bert.embeddings.position_ids"):
        assert key in printed
    assert "missing: 0" in printed and "unexpected: 0" in printed


def test_stage1_file_without_prompt_tokens_is_initialised(lavis_state, tmp_path):
    state = {k: v for k, v in lavis_state.items() if k != "prompt_tokens"}
    path = tmp_path / "blip2_pretrained.pth"
    torch.save({"model": state}, path)
    report = convert_lavis(path, PRESET, tmp_path / "out")
    assert report.initialised == ["prompt_tokens"]
    prompt = cir_core.load_model(tmp_path / "out").prompt_tokens
    assert 0.01 < prompt.std().item() < 0.03  # N(0, 0.02) as SPRC initialises P'
    assert torch.equal(load_lavis_checkpoint(path)["query_tokens"], lavis_state["query_tokens"])


def test_bare_state_dict_is_accepted(lavis_state, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(lavis_state, path)
    assert convert_lavis(path, PRESET, tmp_path / "out").ok


# ------------------------------------------------------------------ bad inputs: clear message, no output folder
def _fails(tmp_path, source: str, *, flag="--from-lavis", preset=PRESET, capsys=None) -> str:
    out = tmp_path / "never-written"
    code = cir_main(["convert", flag, source, "--preset", preset, "--out", str(out)])
    assert code == 2
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never-written")]  # no staging left over
    return capsys.readouterr().err if capsys else ""


def test_truncated_file(lavis_file, tmp_path, capsys):
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(lavis_file.read_bytes()[:5000])
    assert "truncated or corrupt" in _fails(tmp_path, str(broken), capsys=capsys)


@pytest.mark.parametrize("data", [b"\x80\x02a.", b"\x80\x02]a.", b"\x80\x020.", bytes(range(256))])
def test_unreadable_bytes_are_not_a_readable_checkpoint(tmp_path, capsys, data):
    broken = tmp_path / "random.pt"
    broken.write_bytes(data)
    err = _fails(tmp_path, str(broken), capsys=capsys)
    assert f"{broken} is not a readable checkpoint (truncated or corrupt: " in err and err.count("\n") == 1


def test_convert_fuzz_gives_one_line_errors_and_writes_nothing(lavis_file, lavis_state, tmp_path, capsys):
    """Seeded random corruptions of a LAVIS file: each conversion stops with one line, exit code 2,
    and leaves no output folder or staging folder behind."""
    import random
    import shutil

    rng = random.Random(22)
    original = lavis_file.read_bytes()
    keys = sorted(lavis_state)
    for trial in range(40):
        source = tmp_path / f"trial{trial}.pt"
        how = rng.choice(["truncate", "bytes", "random", "junk_value", "junk_top", "wrong_shape"])
        if how == "truncate":
            source.write_bytes(original[:rng.randrange(len(original))])
        elif how == "bytes":
            data = bytearray(original)
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            source.write_bytes(bytes(data))
        elif how == "random":
            source.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))))
        elif how == "junk_value":
            state = dict(lavis_state)
            state[rng.choice(keys)] = rng.choice([1, "x", None, [torch.zeros(1)], {"a": torch.zeros(1)}])
            torch.save({"model": state}, source)
        elif how == "junk_top":
            torch.save(rng.choice([[1, 2], "text", 5, {}, {"model": {}}, {"model": [torch.zeros(1)]}]), source)
        else:
            state = dict(lavis_state)
            key = rng.choice(keys)
            state[key] = torch.zeros(*[n + 1 for n in state[key].shape] or [2])
            torch.save({"model": state}, source)
        out = tmp_path / "never-written"
        code = cir_main(["convert", "--from-lavis", str(source), "--preset", PRESET, "--out", str(out)])
        err = capsys.readouterr().err
        if how == "bytes" and code == 0:  # the flips hit tensor values only (zip entries carry no checksum)
            shutil.rmtree(out)
            continue
        assert code == 2 and "Traceback" not in err, (how, err)
        assert err.splitlines()[-1].startswith("cir convert: error: "), (how, err)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never-written")]


def test_missing_file(tmp_path, capsys):
    assert "does not exist" in _fails(tmp_path, str(tmp_path / "nothing.pt"), capsys=capsys)


def test_pickle_with_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "objects.pt"
    torch.save({"model": {"query_tokens": torch.zeros(1)}, "args": argparse.Namespace(lr=1e-5)}, path)
    err = _fails(tmp_path, str(path), capsys=capsys)
    assert "pickled Python objects besides tensors" in err and "argparse.Namespace" in err


def test_other_architecture_is_refused(tmp_path, capsys):
    import torch.nn as nn

    resnet_like = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 10))
    path = tmp_path / "resnet.pt"
    torch.save({"model": resnet_like.state_dict()}, path)
    err = _fails(tmp_path, str(path), capsys=capsys)
    assert "is not a LAVIS BLIP-2/SPRC state dict" in err and "0.weight" in err


def test_shape_mismatch_against_preset_lists_the_keys(tmp_path, capsys):
    wider = cir_core.config.apply_overrides(load_preset(PRESET), {"qformer.num_query_tokens": 8})
    path = tmp_path / "eight_queries.pt"
    torch.save({"epoch": 1, "Blip2QformerCirAlignPrompt": random_lavis_state_dict(wider)}, path)
    err = _fails(tmp_path, str(path), capsys=capsys)
    assert "does not fit preset 'tiny-test'" in err and "2 shape mismatches" in err
    assert "query_tokens: source (1, 8, 32) vs model (1, 4, 32)" in err
    assert "prompt_tokens: source (1, 8, 32) vs model (1, 4, 32)" in err


def test_vocab_without_dec_row_is_refused(lavis_state, tmp_path, capsys):
    state = dict(lavis_state)
    state["Qformer.bert.embeddings.word_embeddings.weight"] = state["Qformer.bert.embeddings.word_embeddings.weight"][:30522]
    path = tmp_path / "bert_vocab.pt"
    torch.save({"model": state}, path)
    err = _fails(tmp_path, str(path), capsys=capsys)
    assert "30522 rows" in err and "[DEC]" in err


def test_missing_and_unexpected_keys_are_errors(lavis_state, tmp_path, capsys):
    state = {k: v for k, v in lavis_state.items() if ".intermediate.dense" not in k}  # a Q-Former without text FFN
    state["visual_encoder.norm.weight"] = torch.ones(32)
    path = tmp_path / "stage2.pt"
    torch.save({"model": state}, path)
    err = _fails(tmp_path, str(path), capsys=capsys)
    assert "4 missing keys" in err and "qformer.encoder.layer.0.intermediate.dense.bias" in err
    assert "1 unexpected keys" in err and "visual_encoder.norm.weight" in err


def test_unknown_preset(lavis_file, tmp_path, capsys):
    err = _fails(tmp_path, str(lavis_file), preset="vit-huge", capsys=capsys)
    assert "unknown preset 'vit-huge'" in err and "tiny-test" in err


def test_refuses_to_replace_a_non_checkpoint_folder(lavis_file, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="not a checkpoint folder"):
        convert_lavis(lavis_file, PRESET, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------ transformers layout
@pytest.fixture(scope="module")
def hub_model(config):
    """A random transformers Blip2ForImageTextRetrieval at the tiny-test sizes (real transformers names)."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    from cir_core.model import _qformer_hf_config, _vision_hf_config

    hf_config = Blip2Config(vision_config=_vision_hf_config(config).to_dict(),
                            qformer_config=_qformer_hf_config(config).to_dict(),
                            num_query_tokens=config.qformer.num_query_tokens, image_text_hidden_size=config.embed_dim)
    torch.manual_seed(2)
    model = Blip2ForImageTextRetrieval(hf_config).eval()
    # transformers gives post_layernorm the EVA eps (1e-6); LAVIS's ln_vision, which we follow, uses 1e-5.
    model.vision_model.post_layernorm.eps = config.vision.ln_vision_eps
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def test_transformers_folder_import(hub_model, tmp_path, capsys):
    folder = tmp_path / "blip2-itm-vit-g"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in hub_model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    out = tmp_path / "out"
    assert cir_main(["convert", "--from-transformers", str(folder), "--preset", PRESET, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "itm_head.weight" in printed and "prompt_tokens" in printed and "temp" in printed

    model = cir_core.load_model(out)
    ours = model.state_dict()
    for name, tensor in state.items():
        if not name.startswith("itm_head"):
            assert torch.equal(ours[name], tensor), name
    assert model.temp.item() == pytest.approx(0.07)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hub_model.vision_model(pixel_values=pixels).last_hidden_state
        hidden = hub_model.qformer(query_embeds=hub_model.query_tokens.expand(2, -1, -1),
                                   encoder_hidden_states=expected).last_hidden_state
        expected_targets = torch.nn.functional.normalize(hub_model.vision_projection(hidden), dim=-1)
    torch.testing.assert_close(model.encode_target(pixels), expected_targets, atol=1e-5, rtol=0)


def test_transformers_sharded_and_bin(hub_model, tmp_path):
    state = {k: v.contiguous() for k, v in hub_model.state_dict().items()}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(sharded / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    report = convert_transformers_blip2(sharded, PRESET, tmp_path / "from-shards")
    assert report.ok and sorted(report.initialised) == ["prompt_tokens", "temp"]
    assert sorted(report.dropped) == ["itm_head.bias", "itm_head.weight"]

    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    torch.save(state, bin_folder / "pytorch_model.bin")
    convert_transformers_blip2(bin_folder, PRESET, tmp_path / "from-bin")
    a = cir_core.load_model(tmp_path / "from-shards").state_dict()
    b = cir_core.load_model(tmp_path / "from-bin").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same weights, and the same seeded prompt_tokens

    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors does not exist"):
        convert_transformers_blip2(sharded, PRESET, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_transformers_bad_inputs(lavis_file, tmp_path, capsys):
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    assert "holds no transformers weights" in _fails(tmp_path, str(empty), flag="--from-transformers", capsys=capsys)
    err = _fails(tmp_path, str(lavis_file), flag="--from-transformers", capsys=capsys)
    assert "not a transformers Blip2 state dict" in err and "--from-lavis" in err
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    assert "truncated or corrupt" in _fails(tmp_path, str(corrupt), flag="--from-transformers", capsys=capsys)


def test_float16_storage(lavis_file, lavis_state, tmp_path):
    out = tmp_path / "half"
    assert cir_main(["convert", "--from-lavis", str(lavis_file), "--preset", PRESET, "--out", str(out),
                     "--dtype", "float16"]) == 0
    from safetensors.torch import load_file

    stored = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    model = cir_core.load_model(out)
    assert torch.equal(model.vision_model.embeddings.patch_embedding.weight,
                       lavis_state["visual_encoder.patch_embed.proj.weight"].float())
    torch.testing.assert_close(model.query_tokens, lavis_state["query_tokens"], atol=1e-3, rtol=1e-3)
