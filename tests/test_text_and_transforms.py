import pytest
import torch
from PIL import Image

from cir_core.config import PreprocessConfig
from cir_core.text import clean_caption, load_tokenizer, tokenize
from cir_core.transforms import ImageTransform, target_pad


def test_clean_caption_official_rules():
    assert clean_caption('Make it RED! (and "shiny"); now:~#*') == "make it red and shiny now"
    assert len(clean_caption(" ".join(["word"] * 80)).split()) == 50
    assert clean_caption("   ") == ""


def test_tokenizer_has_full_vocab_plus_dec():
    tokenizer = load_tokenizer(expected_size=30523)
    assert tokenizer.convert_tokens_to_ids("[DEC]") == 30522
    assert tokenizer.convert_tokens_to_ids("lemon") != tokenizer.unk_token_id


def test_tokenizer_guards(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.txt")
    small = tmp_path / "vocab.txt"
    small.write_text("[PAD]\n[UNK]\n")
    with pytest.raises(ValueError, match="only 2 entries"):
        load_tokenizer(small)
    with pytest.raises(ValueError, match="expects 10"):
        load_tokenizer(expected_size=10)


def test_tokenize_truncates_to_max_tokens():
    tokenizer = load_tokenizer()
    batch = tokenize(tokenizer, ["a " * 100, "b"], max_words=50, max_tokens=32)
    assert batch.input_ids.shape == (2, 32)
    assert batch.attention_mask[1].sum() == 3
    with pytest.raises(ValueError):
        tokenize(tokenizer, [])
    with pytest.raises(ValueError):
        tokenize(tokenizer, [None])


def test_target_pad_only_beyond_ratio():
    assert target_pad(Image.new("RGB", (120, 100)), 1.25).size == (120, 100)
    padded = target_pad(Image.new("RGB", (200, 100), "white"), 1.25)
    assert padded.size == (200, 160)
    # the padding is black and symmetric
    assert padded.getpixel((100, 0)) == (0, 0, 0) and padded.getpixel((100, 159)) == (0, 0, 0)
    assert padded.getpixel((100, 80)) == (255, 255, 255)


def test_image_transform_modes():
    transform = ImageTransform(PreprocessConfig(image_size=32))
    inputs = [Image.new("RGB", (50, 40), "red"), Image.new("RGBA", (40, 40), (0, 0, 0, 0)),
              Image.new("L", (40, 90)), Image.new("CMYK", (30, 30)), Image.new("I;16", (40, 40), 60000)]
    for image in inputs:
        tensor = transform(image)
        assert tensor.shape == (3, 32, 32) and torch.isfinite(tensor).all()
    # transparent pixels become white, not black
    white = transform(Image.new("RGB", (40, 40), "white"))
    assert torch.allclose(transform(inputs[1]), white)


def test_padding_a_strip_works_on_a_shrunk_copy(monkeypatch):
    from cir_core.transforms import shrink_before_padding, target_pad

    photo = Image.new("RGB", (640, 480))
    assert shrink_before_padding(photo, 1.25, 224) is photo  # padding adds little: nothing changes
    strip = Image.new("RGB", (40000, 10), "red")
    shrunk = shrink_before_padding(strip, 1.25, 32)
    padded = target_pad(shrunk, 1.25)
    assert padded.width * padded.height <= 4 * 32 * 4 * 32 * 1.25 + 1000  # not 40000 x 32000
    sizes = []
    monkeypatch.setattr("cir_core.transforms.target_pad",
                        lambda image, ratio: sizes.append(image.size) or target_pad(image, ratio))
    config = PreprocessConfig(image_size=32)
    assert ImageTransform(config)(strip).shape == (3, 32, 32)
    assert sizes == [shrunk.size]
