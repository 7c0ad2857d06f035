"""A real browser drives the app: upload, caption, Search, then results, token chips and heatmaps;
a result clicked as the new reference; a failure case loaded with one click."""
import os
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (run_tests.sh installs it)"),
]


@pytest.fixture(scope="module")
def app_url(served):
    engine, url = served
    engine.prepare_caption_bank().join(timeout=120)  # otherwise built on the first explained search
    return url


@contextmanager
def app_page(url: str, height: int):
    """A page of the app in Debian's Chromium, headless (playwright's own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(url, wait_until="load")
            yield page
        finally:
            browser.close()


def test_upload_caption_search_shows_results_tokens_and_heatmaps(app_url, tmp_path):
    from playwright.sync_api import expect

    upload = tmp_path / "query.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(upload)
    with app_page(app_url, 1600) as page:
        # A benchmark example first puts a gallery reference in place; the upload must replace it.
        page.locator(".gallery-item, tr.tr-body").first.click()
        expect(page.locator("#reference img").first).to_be_visible(timeout=20_000)
        page.locator("#reference input[type=file]").set_input_files(str(upload))
        page.locator("#caption textarea").fill("make the red circle large")
        page.locator("#explain input[type=checkbox]").check()  # on by default for explainable models
        page.locator("#search").click()
        expect(page.locator("#results img").first).to_be_visible(timeout=60_000)
        expect(page.locator("#summary")).to_contain_text("an uploaded image", timeout=30_000)
        expect(page.locator("#prompt-chips .cir-chip").first).to_be_visible(timeout=30_000)
        # CJK vocabulary entries find a CJK font where the visitor has one, not a box
        chip_font = page.locator("#prompt-chips .cir-chip").first.evaluate("chip => getComputedStyle(chip).fontFamily")
        assert "Noto Sans CJK SC" in chip_font and "Microsoft YaHei" in chip_font
        # The prompt tab leads with the captions nearest the composed query and the prompt alone.
        expect(page.locator("#prompt-captions")).to_contain_text("Composed query: nearest descriptions of gallery images")
        assert page.locator("#prompt-captions li").count() == 10
        first_caption = page.locator("#prompt-captions li").first.inner_text()
        assert any(word in first_caption for word in ("square", "circle", "triangle"))
        box_captions = page.locator("#prompt-captions").bounding_box()
        box_chips = page.locator("#prompt-chips").bounding_box()
        assert box_captions["y"] < box_chips["y"]  # captions first, tokens below
        page.get_by_text("this benchmark's words").click()
        expect(page.locator("#prompt-chips")).to_contain_text("benchmark's own words", timeout=30_000)
        assert page.locator("#results img").count() == 10
        page.get_by_role("tab", name="Attention maps").click()
        expect(page.locator("#attention-average img").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "browser_attention.png"), full_page=True)
        page.get_by_role("tab", name="Sentence prompt").click()
        page.screenshot(path=str(ARTIFACTS / "browser_search.png"), full_page=True)

        # Iterative refinement: a clicked result becomes the reference.
        page.locator("#results button.thumbnail-item").first.click()
        expect(page.locator("#reference-info")).to_contain_text("from the results", timeout=30_000)

        # Failure inspection: one click loads a benchmark case and shows its ground truth.
        page.get_by_role("tab", name="Failure inspection").click()
        page.get_by_role("button", name="Find failures").click()
        expect(page.locator("#failure-count")).to_contain_text("failure(s)", timeout=60_000)
        page.locator("#failures button.thumbnail-item").first.click()
        expect(page.locator("#summary")).to_contain_text("Ground truth", timeout=60_000)



@pytest.fixture(scope="module")
def cirr_url(tmp_path_factory):
    from standins import needs_real_annotations, write_cirr_val_standin
    from tiny_gallery import serving, write_image_sensitive_checkpoint

    if needs_real_annotations.args[0]:
        pytest.skip(needs_real_annotations.kwargs["reason"])
    import app
    from cir_core.engine import Engine

    root = tmp_path_factory.mktemp("browser-cirr")
    args = app.parse_args(["--model", f"local-dir:{write_image_sensitive_checkpoint(root / 'model')}",
                           "--dataset", "cirr", "--data-root", str(write_cirr_val_standin(root / "cirr"))])
    engine = Engine.from_uris(args.model, source=app.benchmark_source(args), cache_root=root / "cache",
                              progress=False)
    with serving(engine) as url:
        yield url


def test_cirr_failure_view_loads_a_view_angle_failure(cirr_url):
    from playwright.sync_api import expect

    with app_page(cirr_url, 1800) as page:
        page.get_by_role("tab", name="Failure inspection").click()
        page.locator("#group-filter input").click()
        page.get_by_role("option", name="view angle").click()
        page.locator("#find-failures").click()
        expect(page.locator("#failure-count")).to_contain_text("cirr/val: 4181 queries", timeout=120_000)
        expect(page.locator("#group-recall")).to_contain_text("view angle", timeout=30_000)
        expect(page.locator("#failures button.thumbnail-item").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "browser_cirr_failures.png"), full_page=True)
        first_caption = page.locator("#failures button.thumbnail-item").first.inner_text()
        assert "view angle" in first_caption and "target rank" in first_caption
        page.locator("#failures button.thumbnail-item").first.click()
        expect(page.locator("#reference-info")).to_contain_text("benchmark query", timeout=60_000)
        expect(page.locator("#reference-info")).to_contain_text("view angle")
        expect(page.locator("#summary")).to_contain_text("Ground truth", timeout=60_000)
        expect(page.locator("#results img").first).to_be_visible(timeout=30_000)



def caption_boxes(page, gallery: str) -> list[dict]:
    """Per item of a gallery: where its picture ends and its caption starts, whether the caption is
    cut, its text, and the picture's border."""
    return page.locator(f"{gallery} .gallery-item").evaluate_all("""items => items.map(item => {
        const picture = item.querySelector('img'), caption = item.querySelector('.caption-label');
        return {pictureBottom: picture.getBoundingClientRect().bottom, captionTop: caption.getBoundingClientRect().top,
                cut: caption.scrollWidth > caption.clientWidth + 1 || caption.scrollHeight > caption.clientHeight + 1,
                text: caption.innerText, border: getComputedStyle(picture).borderTopWidth};
    })""")


# Whether an element's top is in the upper half of the window.
IN_VIEW = """selector => {
    const box = document.querySelector(selector).getBoundingClientRect();
    return box.top >= 0 && box.top < window.innerHeight / 2;
}"""


def test_result_captions_sit_whole_under_bordered_pictures(app_url):
    import re

    from playwright.sync_api import expect

    with app_page(app_url, 1000) as page:
        page.locator(".gallery-item, tr.tr-body").first.click()  # a benchmark query: its target gets a mark
        expect(page.locator("#reference img").first).to_be_visible(timeout=20_000)
        page.locator("#top-k input[type=number]").fill("40")  # the whole tiny gallery: the target is among them
        page.locator("#top-k input[type=number]").press("Enter")
        page.locator("#search").click()
        expect(page.locator("#results .caption-label").nth(39)).to_be_attached(timeout=60_000)
        boxes = caption_boxes(page, "#results")
        page.screenshot(path=str(ARTIFACTS / "browser_result_captions.png"), full_page=True)
        assert len(boxes) == 40
        for box in boxes:
            assert box["captionTop"] >= box["pictureBottom"] - 1, box  # under the picture, never over it
            assert not box["cut"], box
            assert box["border"] != "0px"  # white scenes stay apart
            assert re.fullmatch(r"(★ target )?#\d+ · -?\d\.\d{3} · \w+", box["text"].strip()), box
        assert sum(box["text"].startswith("★ target #") for box in boxes) == 1


def test_the_failure_tab_opens_on_a_report_and_a_card_brings_its_results_into_view(served, app_url):
    from playwright.sync_api import expect

    engine, _ = served
    first_group = engine.group_names()[0]
    with app_page(app_url, 900) as page:
        page.get_by_role("tab", name="Failure inspection").click()
        expect(page.locator("#failure-count")).to_contain_text("failure(s)", timeout=60_000)  # no click on Find
        expect(page.locator("#group-filter input")).to_have_value(first_group)
        text = page.locator("#failure-tab").inner_text()
        assert "Each card" in text and "Click a card" in text and " row" not in text
        cards = page.locator("#failures .gallery-item")
        expect(cards.first).to_be_visible(timeout=30_000)
        boxes = caption_boxes(page, "#failures")
        assert boxes and all(first_group in box["text"] for box in boxes)  # the first group's failures
        assert all(box["captionTop"] >= box["pictureBottom"] - 1 and not box["cut"] for box in boxes), boxes
        cards.first.scroll_into_view_if_needed()
        assert not page.evaluate(IN_VIEW, "#results")
        cards.first.locator("button").click()
        page.wait_for_function(IN_VIEW, arg="#results", timeout=10_000)
        expect(page.locator("#summary")).to_contain_text("Ground truth", timeout=60_000)
        expect(page.locator("#results img").first).to_be_in_viewport(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "browser_failure_card_clicked.png"))


def test_the_api_page_is_short_and_documents_the_json_endpoints(app_url):
    from playwright.sync_api import expect

    with app_page(app_url, 1000) as page:
        page.get_by_text("Use via API").click()
        docs = page.locator(".api-docs")
        expect(docs).to_contain_text("API name: /benchmark", timeout=30_000)
        text = docs.inner_text()
        assert len(text) < 15_000
        names = {line.split()[2] for line in text.splitlines() if line.startswith("API name: ")}
        assert names == {"/search", "/compare", "/pick_gallery_image", "/benchmark"}
        assert "with_explanations bool Default:False" in text
        assert "value_" not in text and "parameter_" not in text  # every input and output is named
