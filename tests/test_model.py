import json

import pytest
import torch
import torch.nn.functional as F

import cir_core
from cir_core.text import TextBatch
from cir_core.config import SPRCConfig, load_preset
from cir_core.model import readout_position_table


def images(n, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_normalisation(tiny_model):
    config = tiny_model.config
    q, d = config.qformer.num_query_tokens, config.embed_dim
    targets = tiny_model.encode_target(images(3))
    assert targets.shape == (3, q, d)
    assert torch.allclose(targets.norm(dim=-1), torch.ones(3, q), atol=1e-5)
    encoding = tiny_model.encode_query(images(2), ["remove the lemon", "make it red"], output_attentions=True)
    assert encoding.query.shape == (2, d)
    assert encoding.prompt.shape == (2, q, config.qformer.hidden_size)
    assert torch.allclose(encoding.query.norm(dim=-1), torch.ones(2), atol=1e-5)
    layers = (config.qformer.num_hidden_layers + 1) // config.qformer.cross_attention_frequency
    assert len(encoding.cross_attentions) == layers
    assert encoding.cross_attentions[0].shape == (2, config.qformer.num_attention_heads, q, config.vision.num_tokens)
    assert not encoding.query.requires_grad


def test_score_is_max_over_queries(tiny_model):
    query = F.normalize(torch.randn(2, 16), dim=-1)
    targets = F.normalize(torch.randn(5, 4, 16), dim=-1)
    expected = torch.tensor([[max(float(query[i] @ targets[j, k]) for k in range(4)) for j in range(5)] for i in range(2)])
    assert torch.allclose(tiny_model.score(query, targets), expected, atol=1e-6)


def test_cached_vision_features_equal_pixels(tiny_model):
    pixels = images(2, seed=3)
    cached = tiny_model.encode_images(pixels)
    assert torch.equal(cached.targets, tiny_model.encode_target(pixels))
    from_pixels = tiny_model.encode_query(pixels, ["a red circle", "move it left"]).query
    from_features = tiny_model.encode_query(cached.vision_features, ["a red circle", "move it left"]).query
    assert torch.allclose(from_pixels, from_features, atol=1e-6)


def test_batch_size_one_everywhere(tiny_model):
    pixels = images(1, seed=4)
    assert tiny_model.encode_target(pixels).shape[0] == 1
    assert tiny_model.encode_query(pixels, "make it blue").query.shape[0] == 1
    model = cir_core.create_model("tiny-test")
    out = model(pixels, ["make it blue"], images(1, seed=5))
    assert out.logits.shape == (1, 1)
    out.loss.backward()
    # one triplet: the only target is the right one, so both contrastive losses are zero
    assert float(out.itc.detach()) == pytest.approx(0.0, abs=1e-6) and float(out.rtc.detach()) == pytest.approx(0.0, abs=1e-6)


def test_padding_does_not_change_queries(tiny_model):
    pixels = images(2, seed=6)
    alone = tiny_model.encode_query(pixels[:1], "red").query
    padded = tiny_model.encode_query(pixels, ["red", "a much longer caption with many more words"]).query[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_reference_shape_is_checked(tiny_model):
    with pytest.raises(ValueError, match="reference must be"):
        tiny_model.encode_query(torch.randn(1, 5, 7), "make it red")
    with pytest.raises(ValueError, match="captions"):
        tiny_model.encode_query(images(2), ["only one"])


def test_losses_match_hand_computation():
    torch.manual_seed(1)
    model = cir_core.create_model("tiny-test", **{"loss.itc_weight": 1.0, "loss.rtc_weight": 0.5,
                                                 "loss.align_weight": 2.0})
    model.eval()  # no dropout, so the recomputation below sees the same network
    reference, target = images(3, seed=7), images(3, seed=8)
    captions = ["make it red", "remove the square", "add a blue circle on the left"]
    out = model(reference, captions, target)

    text = model.tokenize(captions)
    with torch.no_grad():
        targets = model.target_vectors(model.vision_features(target))  # (3, Q, D)
        prompt = model.sentence_prompt(model.vision_features(reference), text)
        query = model.compose(prompt, text)
        auxiliary = model.auxiliary_query(text)
    temp = float(model.temp)

    def contrastive(vectors):
        total = 0.0
        for i in range(3):
            logits = [max(float(vectors[i] @ targets[j, k]) for k in range(targets.shape[1])) / temp for j in range(3)]
            top = max(logits)
            log_sum = top + torch.log(torch.tensor([sum(torch.exp(torch.tensor(v - top)) for v in logits)])).item()
            total += log_sum - logits[i]
        return total / 3

    itc, rtc = contrastive(query), contrastive(auxiliary)
    prompt_mean = prompt.mean(dim=1)
    aux_mean = model.prompt_tokens.detach().mean(dim=1)
    align = float(((prompt_mean - aux_mean) ** 2).mean())
    assert float(out.itc) == pytest.approx(itc, rel=1e-4)
    assert float(out.rtc) == pytest.approx(rtc, rel=1e-4)
    assert float(out.align) == pytest.approx(align, rel=1e-4)
    assert float(out.loss) == pytest.approx(itc + 0.5 * rtc + 2.0 * align, rel=1e-4)


def test_training_forward_gradients_reach_trainable_parts():
    model = cir_core.create_model("tiny-test")
    out = model(images(2), ["make it red", "remove it"], images(2, seed=1))
    out.loss.backward()
    for name in ("query_tokens", "prompt_tokens", "temp"):
        assert getattr(model, name).grad is not None, name
    assert model.vision_projection.weight.grad is not None
    assert model.text_projection.weight.grad.abs().sum() > 0


def test_textbatch_input_equals_strings(tiny_model):
    text = tiny_model.tokenize(["make it red"])
    assert isinstance(text, TextBatch)
    a = tiny_model.encode_query(images(1), text).query
    b = tiny_model.encode_query(images(1), ["make it red"]).query
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["static_prompt", "pseudo_word", "image_only", "text_only", "late_fusion"])
def test_baseline_query_modes_train_and_encode(mode):
    torch.manual_seed(2)
    model = cir_core.create_model("tiny-test", query_mode=mode)
    out = model(images(2), ["make it red", "remove it"], images(2, seed=1))
    assert float(out.rtc) == 0.0 and float(out.align) == 0.0
    out.loss.backward()
    model.eval()
    encoding = model.encode_query(images(2), ["make it red", "remove it"])
    assert encoding.query.shape == (2, 16) and encoding.prompt is None
    assert torch.allclose(encoding.query.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_inference_baselines_are_what_they_claim(tiny_model):
    import copy
    import dataclasses

    pixels, other = images(2, seed=9), images(2, seed=10)
    captions = ["make it red", "remove the circle"]
    modes = {}
    for mode in ("image_only", "text_only", "late_fusion"):
        model = copy.copy(tiny_model)
        model.config = dataclasses.replace(tiny_model.config, query_mode=mode)
        modes[mode] = (model.encode_query(pixels, captions).query, model.encode_query(other, captions).query,
                       model.encode_query(pixels, ["something else", "else"]).query)
    image_mean = F.normalize(tiny_model.encode_target(pixels).mean(dim=1), dim=-1)
    assert torch.allclose(modes["image_only"][0], image_mean, atol=1e-6)
    assert torch.allclose(modes["image_only"][0], modes["image_only"][2])  # ignores the caption
    assert torch.allclose(modes["text_only"][0], modes["text_only"][1])  # ignores the image
    fused = F.normalize(modes["image_only"][0] + modes["text_only"][0], dim=-1)
    assert torch.allclose(modes["late_fusion"][0], fused, atol=1e-6)


def test_readout_positions_tell_identical_patches_apart(tmp_path):
    from cir_core.train import parameter_groups
    from cir_core.train_config import TrainConfig

    plain = cir_core.create_model("tiny-test")
    placed = cir_core.create_model("tiny-test", **{"vision.readout_positions": True})
    assert plain.readout_positions is None
    table = placed.readout_positions
    assert table.shape == (1, placed.config.vision.num_tokens, placed.config.vision.hidden_size)
    assert torch.count_nonzero(table[0, 0]) == 0  # the class token has no place
    patches = F.normalize(table[0, 1:], dim=-1)
    assert float((patches @ patches.T - 2 * torch.eye(len(patches))).max()) < 0.999  # every patch its own row
    placed.load_state_dict(plain.state_dict(), strict=False)  # same encoder: only the table differs
    blank = torch.zeros(1, 3, placed.config.vision.image_size, placed.config.vision.image_size)
    with torch.no_grad():
        base, shifted = plain.vision_features(blank), placed.vision_features(blank)
    assert torch.allclose(shifted - base, table, atol=1e-5)
    table.data.add_(0.25)  # trained values survive a checkpoint round trip
    loaded = cir_core.load_model(cir_core.save_model(placed, tmp_path / "placed"))
    assert loaded.config.vision.readout_positions and torch.equal(loaded.readout_positions, table)
    groups = parameter_groups(placed, TrainConfig(), pretrained=set())
    group = next(g for g in groups if any(p is table for p in g["params"]))
    assert group["weight_decay"] == 0.0 and group["lr"] == TrainConfig().optim.lr


def test_readout_position_scale_sets_the_starting_size_of_the_table():
    half = cir_core.create_model("tiny-test", **{"vision.readout_positions": True}).readout_positions
    triple = cir_core.create_model("tiny-test", **{"vision.readout_positions": True,
                                                   "vision.readout_position_scale": 1.5}).readout_positions
    assert torch.allclose(triple, 3 * half)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="readout_position_scale must be a positive number"):
            cir_core.create_model("tiny-test", **{"vision.readout_positions": True,
                                                  "vision.readout_position_scale": bad})


def _grid_cell_codes(table: torch.Tensor, side: int, cells: int) -> torch.Tensor:
    """(cells*cells, W) unit vectors: the table's patch codes averaged over each grid cell."""
    grid = table[0, 1:].view(side, side, -1)
    step = side // cells
    codes = [grid[r * step:(r + 1) * step, c * step:(c + 1) * step].reshape(step * step, -1).mean(0)
             for r in range(cells) for c in range(cells)]
    return F.normalize(torch.stack(codes), dim=-1)


def test_the_position_table_sets_neighbouring_cells_apart_less_than_far_ones():
    vision = load_preset("shapes-mini").vision  # 6x6 patches under a 3x3 grid
    side = vision.image_size // vision.patch_size
    codes = _grid_cell_codes(readout_position_table(vision, 1.0), side, 3)
    similarity = codes @ codes.T
    assert similarity[0, 1] > similarity[0, 8]  # the next cell is nearer than the far corner


def test_a_retired_option_reads_at_its_no_op_value_and_is_refused_otherwise(tmp_path):
    data = load_preset("tiny-test").to_dict()
    data["vision"]["readout_position_wavelengths"] = None  # as configs written before it went hold it
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert SPRCConfig.from_json_file(path) == load_preset("tiny-test")
    data["vision"]["readout_position_wavelengths"] = [3, 12]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="readout_position_wavelengths: this option no longer exists"):
        SPRCConfig.from_json_file(path)


def test_the_fingerprint_hashes_retired_options_back_in_so_old_indexes_stay_tied():
    config = load_preset("tiny-test")
    written_before = json.loads(config.to_json())
    written_before["vision"]["readout_position_wavelengths"] = None
    assert json.dumps(config.fingerprint_dict(), indent=2) == json.dumps(written_before, indent=2)


@pytest.mark.parametrize("key, bad", [("readout_position_scale", 0.0), ("readout_position_scale", float("inf"))])
def test_a_config_with_a_bad_position_table_is_refused_when_read_not_when_built(tmp_path, key, bad):
    data = load_preset("tiny-test").to_dict()
    assert data["vision"]["readout_positions"] is False  # refused even while the table is off
    data["vision"][key] = bad
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    config = SPRCConfig.from_json_file(path)
    with pytest.raises(ValueError, match=f"invalid model config 'tiny-test': vision.{key} must be"):
        config.validate()


@pytest.mark.parametrize("name", ["../../outside", "a/b", ".hidden", "", "x" * 65, "name with spaces"])
def test_a_model_name_that_could_leave_a_cache_folder_is_refused(name):
    config = load_preset("tiny-test")
    config.name = name
    with pytest.raises(ValueError, match="the name must be"):
        config.validate()
