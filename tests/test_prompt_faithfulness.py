"""Caption banks, the prompt faithfulness measure and the image-description training term."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

import cir_core
from cir_core.caption_bank import CaptionBank, CaptionBankError
from cir_core.evaluation.prompt_faithfulness import faithfulness_from_vectors

DESCRIPTIONS = ["large red circle top left", "small blue square center",
                "large red circle top left; small blue square center", "small green triangle bottom right"]


def axis_bank() -> CaptionBank:
    """Four described images whose description vectors are the four axes of a 4-d space."""
    return CaptionBank(texts=DESCRIPTIONS, image_ids=["a", "b", "c", "d"], vectors=np.eye(4, dtype=np.float32),
                       fingerprint="hand-made")


def test_faithfulness_by_hand():
    bank = axis_bank()
    # query 0 points at c (its target); query 1 at a while its target is d; query 2 (remove: c -> b) at c.
    queries = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.1, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0]])
    prompts = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    removed = [None, None, ["large red circle top left"]]
    result = faithfulness_from_vectors(queries, prompts, bank, ["c", "d", "b"], removed)
    # With 4 captions, every target is among the 5 nearest: both shares are 100.
    assert (result.composed_top5, result.prompt_top5) == (100.0, 100.0)
    assert result.remove_queries == 1 and result.removed_in_first == 100.0  # c still names the red circle
    # A bank of 12 texts, so that top-5 can miss: 8 distractors far from every query.
    big = CaptionBank(texts=DESCRIPTIONS + [f"other {i}" for i in range(8)], image_ids=["a", "b", "c", "d"] +
                      [f"x{i}" for i in range(8)], vectors=np.eye(12, dtype=np.float32), fingerprint="hand-made")
    queries12 = torch.nn.functional.pad(queries, (0, 8))
    prompts12 = torch.nn.functional.pad(prompts, (0, 8))
    queries12[1, 4:9] = 0.5  # query 1 prefers five distractors: d (its target) is not in its top 5
    queries12[2, 1] = 0.5  # query 2's target b comes second, after c
    result = faithfulness_from_vectors(queries12, prompts12, big, ["c", "d", "b"], [None, None, None])
    assert result.composed_top5 == pytest.approx(200 / 3)
    assert result.remove_queries == 0 and result.removed_in_first == 0.0
    removed_gone = faithfulness_from_vectors(queries12[2:], prompts12[2:], big, ["b"], [["small green triangle x"]])
    assert removed_gone.removed_in_first == 0.0  # the nearest caption (c) does not name that object


def test_faithfulness_refuses_targets_without_description():
    with pytest.raises(ValueError, match="no description"):
        faithfulness_from_vectors(torch.zeros(1, 4), torch.zeros(1, 4), axis_bank(), ["zzz"], [None])


def test_caption_bank_is_built_cached_and_refused_for_another_model(tmp_path, tiny_model):
    bank = CaptionBank.build(tiny_model, DESCRIPTIONS, ["a", "b", "c", "d"], key="k1", progress=False)
    assert bank.vectors.shape == (4, tiny_model.config.embed_dim)
    assert np.allclose(np.linalg.norm(bank.vectors, axis=1), 1, atol=1e-5)
    direct = tiny_model.text_vectors(tiny_model.tokenize_descriptions([DESCRIPTIONS[1]]))
    nearest = bank.nearest(direct.detach(), k=2)[0]
    assert nearest[0].text == DESCRIPTIONS[1] and nearest[0].image_id == "b"
    assert nearest[0].similarity == pytest.approx(1.0, abs=1e-5) and nearest[0].similarity >= nearest[1].similarity
    folder = bank.save(tmp_path / "bank")
    again = CaptionBank.load(folder, model=tiny_model, key="k1")
    assert again.texts == DESCRIPTIONS and np.array_equal(again.vectors, bank.vectors)
    torch.manual_seed(7)
    other = cir_core.create_model("tiny-test")
    with pytest.raises(CaptionBankError, match="another model"):
        CaptionBank.load(folder, model=other)
    with pytest.raises(CaptionBankError, match="other texts"):
        CaptionBank.load(folder, model=tiny_model, key="k2")
    folder.write_bytes(b"not numpy")
    with pytest.raises(CaptionBankError, match="damaged"):
        CaptionBank.load(folder)


def test_description_term_is_the_symmetric_image_text_contrast(tiny_model):
    torch.manual_seed(0)
    model = copy.copy(tiny_model.eval())  # eval: no dropout, so the direct computation sees the same network
    model.config = dataclasses.replace(model.config, loss=dataclasses.replace(model.config.loss, description_weight=0.5))
    size = model.config.vision.image_size
    reference, target = torch.randn(3, 3, size, size), torch.randn(3, 3, size, size)
    captions = ["make it red", "add a square", "remove the circle"]
    descriptions = model.tokenize_descriptions(DESCRIPTIONS[:3])
    with torch.no_grad():
        out = model(reference, captions, target, descriptions=descriptions)
        plain = model(reference, captions, target)
    with torch.no_grad():
        texts = model.text_vectors(descriptions)
        targets = model.target_vectors(model.vision_features(target))
    logits = torch.einsum("bd,nqd->bnq", texts, targets).amax(-1) / model.temp  # (3 texts, 3 images)
    labels = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    assert out.description is not None and float(out.description) == pytest.approx(float(expected), rel=1e-4)
    assert plain.description is None
    assert float(out.loss) == pytest.approx(float(plain.loss) + 0.5 * float(expected), rel=1e-4)
