"""The app as shipped (the embedded models over their shipped test splits) in a real browser: its
API page stays short with thousands of gallery ids, and no word of the blocklist
(cir_core/word_filter.py) shows anywhere on the page, over the curated examples and random test
queries, whichever vocabulary decodes the prompt."""
import random
import re
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from cir_core.shipped import SHIPPED
from cir_core.word_filter import is_blocked, word_digest
from test_browser import CHROMIUM, app_page

ROOT = Path(__file__).resolve().parents[1]
RANDOM_QUERIES = 10  # per shipped benchmark (20 in all), besides every curated example
API_PAGE_LIMIT = 15_000  # characters

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (run_tests.sh installs it)"),
    pytest.mark.skipif(not all((ROOT / shipped.model.removeprefix("local-dir:") / "model.safetensors").is_file()
                               and (ROOT / shipped.folders[0] / "info.json").is_file()
                               for shipped in SHIPPED.values()),
                       reason="the embedded models or their shipped test splits are not in this checkout"),
]


@pytest.fixture(scope="module")
def shipped_apps(tmp_path_factory):
    """{benchmark: (engine, url)}: each shipped benchmark served as app.py serves it by default."""
    from cir_core.data.registry import open_source
    from cir_core.engine import Engine
    from tiny_gallery import serving

    apps = {}
    with ExitStack() as stack:
        for name, shipped in SHIPPED.items():
            engine = Engine.from_uris(f"local-dir:{ROOT / shipped.model.removeprefix('local-dir:')}",
                                      source=open_source(name, ROOT / shipped.folders[0]),
                                      index_seed=ROOT / shipped.index_seed, cache_root=tmp_path_factory.mktemp(name),
                                      progress=False)
            engine.prepare_caption_bank().join(timeout=600)  # the nearest captions are on the page too
            apps[name] = engine, stack.enter_context(serving(engine, examples_file=ROOT / shipped.examples))
        yield apps


def test_the_default_apps_api_page_is_short_and_lists_no_gallery_id(shipped_apps):
    from playwright.sync_api import expect

    engine, url = shipped_apps["scenes3d"]
    ids = engine.gallery_ids
    assert len(ids) > 5000
    info = httpx.get(f"{url}gradio_api/info", timeout=30).text
    assert len(info) < API_PAGE_LIMIT
    assert not [image_id for image_id in ids if image_id in info]
    with app_page(url, 1000) as page:
        page.get_by_text("Use via API").click()
        docs = page.locator(".api-docs")
        expect(docs).to_contain_text("API name: /benchmark", timeout=30_000)
        assert len(docs.inner_text()) < API_PAGE_LIMIT and len(docs.text_content()) < API_PAGE_LIMIT


def page_words(text: str) -> set[str]:
    """The words of a page's text, as whitespace leaves them (WordPiece "##" kept) and as letters alone."""
    return set(text.split()) | set(re.findall(r"[^\W\d_]+", text))


@pytest.mark.parametrize("name", list(SHIPPED))
def test_no_blocked_word_shows_over_the_examples_and_random_queries(shipped_apps, name):
    from playwright.sync_api import expect

    from demo.handlers import VOCABULARIES
    from demo.ui import load_curated_examples

    engine, url = shipped_apps[name]
    by_pairid = {query.pairid: query for query in engine.benchmark_queries()}
    curated = [by_pairid[str(entry["pairid"])] for entry in load_curated_examples(ROOT / SHIPPED[name].examples)]
    others = sorted(set(by_pairid) - {query.pairid for query in curated})
    queries = curated + [by_pairid[pairid] for pairid in random.Random(0).sample(others, RANDOM_QUERIES)]
    assert len(curated) >= 8
    headings = {"all words": "nearest vocabulary tokens", VOCABULARIES[1]: "benchmark's own words"}
    chips_read = 0
    with app_page(url, 1400) as page:
        page.locator("#explain input[type=checkbox]").check()
        page.get_by_text("Pick a reference from the gallery").click()
        for query in queries:
            pick = page.locator("#gallery-pick input, #gallery-pick textarea").first
            pick.fill(query.reference_id)
            pick.press("Enter")
            expect(page.locator("#reference-info")).to_contain_text(query.reference_id, timeout=30_000)
            page.locator("#caption textarea").fill(query.caption)
            page.locator("#search").click()
            expect(page.locator("#summary")).to_contain_text(f"{query.reference_id}; caption: {query.caption}",
                                                             timeout=60_000)
            for vocabulary in VOCABULARIES:
                page.locator("#token-vocabulary label", has_text=vocabulary).click()
                expect(page.locator("#prompt-chips")).to_contain_text(headings[vocabulary], timeout=30_000)
                words = page_words(page.evaluate("document.body.innerText"))
                chips = page.locator("#prompt-chips .cir-chip, #auxiliary-chips .cir-chip").all_inner_texts()
                assert chips and {chip.split()[0] for chip in chips} <= words  # the chips are read
                chips_read += len(chips)
                blocked = sorted(word_digest(word) for word in words if is_blocked(word))
                assert not blocked, f"query {query.pairid}, {vocabulary}: words with digests {blocked}"
    assert chips_read >= len(queries) * 2 * 2 * engine.model_summary().prompt_tokens
