"""What the app draws for people: failure cards that keep white scenes apart, captions as text."""
import numpy as np
from PIL import Image

from cir_core.evaluation.failures import BenchmarkQuery, FailureCase
from cir_core.explain import TokenMatch
from demo import render

WHITE = (255, 255, 255)


def failure(caption: str = "walk around to the other side") -> FailureCase:
    query = BenchmarkQuery(pairid="7", reference_id="ref", target_id="tgt", caption=caption,
                           groups=("view angle", "orbit"))
    return FailureCase(query=query, rank=4, target_score=0.6, top_ids=["a", "b", "c"], top_scores=[0.9, 0.8, 0.7],
                       kind="wrong viewpoint")


def white_scene(image_id: str) -> Image.Image:
    return Image.new("RGB", (64, 64), WHITE)


def test_white_scenes_on_a_failure_card_stay_apart():
    picture = render.failure_card_image(failure(), white_scene)
    assert picture.size == (render.FAILURE_COLUMNS * render.THUMB + 16, 2 * (render.THUMB + render.LABEL_HEIGHT + 8))
    card = np.asarray(picture)
    middle = render.THUMB // 2
    row = card[middle]  # across the reference and the target
    # From the reference's centre to the target's: white picture, its border, the grey card, the target's frame.
    crossing = [tuple(pixel) for pixel in row[middle: render.THUMB + 8 + middle]]
    assert crossing[0] == WHITE
    assert tuple(render.PICTURE_BORDER) in crossing and tuple(render.CARD_BACKDROP) in crossing
    assert tuple(render.TARGET_FRAME) in crossing
    between = row[render.THUMB: render.THUMB + 8]  # the gap between two tiles
    assert (between == render.CARD_BACKDROP).all()
    white_share = (card == 255).all(axis=-1).mean()
    assert 0.2 < white_share < 0.8  # the pictures, not the card, are white


def test_a_failure_cards_caption_is_text_under_it_whatever_its_script():
    case = failure("把桌子转过来 from the other side")
    (picture, caption), = render.failure_gallery([case], white_scene)
    first_line, second_line = caption.split("\n")
    assert first_line == "7: 把桌子转过来 from the other side"
    assert second_line == "target rank 4 · wrong viewpoint · view angle, orbit"
    assert picture.size == render.failure_card_image(case, white_scene).size


def test_token_chips_keep_cjk_tokens_and_name_cjk_fonts():
    from demo.style import CSS

    chips = render.token_chips([[TokenMatch("猫", 0.3), TokenMatch("##ね", 0.2)]], "prompt", "cir-prompt")
    assert "猫 <small>0.30</small>" in chips and "##ね" in chips
    chip_rule = next(rule for rule in CSS.split("}") if rule.strip().startswith(".cir-chip {"))
    assert "Noto Sans CJK SC" in chip_rule and "Microsoft YaHei" in chip_rule and chip_rule.rstrip().endswith(
        "monospace;")
