"""The prompt view names what its caption bank holds, and a bank of a split's relative captions
never offers a query its own caption."""
import dataclasses

import pytest

from cir_core.caption_bank import CaptionMatch
from cir_core.data.registry import open_source
from cir_core.data.spec import GALLERY_DESCRIPTIONS, OTHER_EDIT_CAPTIONS
from cir_core.engine import Engine
from cir_core.explain import Explanation
from demo.render import PROMPT_NOTE, captions_html
from tiny_gallery import write_image_sensitive_checkpoint, write_tiny_shapes


def explanation_with(kind: str) -> Explanation:
    matches = [CaptionMatch("make it red", None, 0.5), CaptionMatch("add a square", None, 0.25)]
    return Explanation(prompt_tokens=[], auxiliary_tokens=[], attention=None, reference=None,
                       query_captions=matches, prompt_captions=matches, captions_kind=kind)


@pytest.mark.parametrize("kind", [GALLERY_DESCRIPTIONS, OTHER_EDIT_CAPTIONS])
def test_the_caption_lists_are_named_by_what_the_bank_holds(kind):
    shown = captions_html(explanation_with(kind))
    assert f"Composed query: nearest {kind}" in shown and f"Sentence prompt alone: nearest {kind}" in shown
    assert "sequence of vectors" in PROMPT_NOTE and "nearest" in PROMPT_NOTE
    assert PROMPT_NOTE.split(":")[0] in shown


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt-view")
    return root, write_image_sensitive_checkpoint(root / "model"), open_source("shapes", write_tiny_shapes(root / "shapes"))


def test_a_benchmark_source_says_whether_its_bank_describes_images(shapes):
    _, _, source = shapes
    assert source.captions and source.caption_bank_kind == GALLERY_DESCRIPTIONS
    edits_only = dataclasses.replace(source, captions={})
    texts, ids = edits_only.caption_texts()
    assert edits_only.caption_bank_kind == OTHER_EDIT_CAPTIONS and set(ids) == {None}
    assert set(texts) == {t.caption for t in source.split.triplets if t.caption.strip()}


def test_a_query_is_not_shown_its_own_caption(shapes):
    root, checkpoint, source = shapes
    edits_only = dataclasses.replace(source, captions={})  # as on CIRR: the bank is the split's relative captions
    engine = Engine.from_uris(f"local-dir:{checkpoint}", source=edits_only, cache_root=root / "cache", progress=False)
    engine.prepare_caption_bank().join(timeout=120)
    bank = engine.prompt_views.caption_bank()
    queries = engine.benchmark_queries()
    own_first = [q for q in queries  # queries whose own caption would be listed without the exclusion
                 if q.caption in [m.text for m in bank.nearest(
                     engine.search(q.reference_id, q.caption, k=1).query_vector[None])[0]]]
    assert own_first
    query = own_first[0]
    result = engine.search(query.reference_id, query.caption, k=3, explain=True)
    explanation = result.explanation
    assert explanation.captions_kind == OTHER_EDIT_CAPTIONS
    for found in (explanation.query_captions, explanation.prompt_captions):
        assert len(found) == 5 and query.caption not in [m.text for m in found]
    expected = [m.text for m in bank.nearest(result.query_vector[None], k=6)[0] if m.text != query.caption][:5]
    assert [m.text for m in explanation.query_captions] == expected
    assert f"nearest {OTHER_EDIT_CAPTIONS}" in captions_html(explanation)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_the_header_names_the_description_term_when_the_model_was_trained_with_it(shapes, weight):
    import gradio as gr

    from demo.ui import build_ui

    root, checkpoint, source = shapes
    engine = Engine.from_uris(f"local-dir:{checkpoint}", source=source, cache_root=root / "cache", progress=False)
    engine.model.config.loss.description_weight = weight
    assert engine.model_summary().description_weight == weight
    header = next(block.value for block in build_ui(engine).blocks.values()
                  if isinstance(block, gr.Markdown) and engine.summary() in (block.value or ""))
    assert ("image-description contrastive term" in header) == (weight > 0) and ("fidelity.md" in header) == (weight > 0)


def test_the_caption_hint_quotes_the_served_benchmark(shapes):
    import gradio as gr

    from demo.ui import build_ui, choose_examples

    root, checkpoint, source = shapes
    engine = Engine.from_uris(f"local-dir:{checkpoint}", source=source, cache_root=root / "cache", progress=False)
    first = choose_examples(engine.benchmark_queries(), [], engine.group_names())[0].caption
    blocks = build_ui(engine).blocks.values()
    caption = next(block for block in blocks if isinstance(block, gr.Textbox) and block.elem_id == "caption")
    header = next(block.value for block in blocks
                  if isinstance(block, gr.Markdown) and engine.summary() in (block.value or ""))
    assert caption.placeholder == f"e.g. {first}" and f'("{first}")' in header


def test_the_prompt_view_decodes_both_prompts_with_the_benchmarks_words_by_default(shapes):
    import gradio as gr

    from demo import render
    from demo.ui import BENCHMARK_WORDS, build_ui

    root, checkpoint, source = shapes
    engine = Engine.from_uris(f"local-dir:{checkpoint}", source=source, cache_root=root / "cache", progress=False)
    radio = next(block for block in build_ui(engine).blocks.values()
                 if isinstance(block, gr.Radio) and block.elem_id == "token-vocabulary")
    assert radio.value == BENCHMARK_WORDS
    query = source.queries[0]
    engine.prepare_caption_bank().join()
    explanation = engine.search(engine.gallery_image(query.reference), query.caption, k=5, explain=True).explanation
    words = set(engine.prompt_views.benchmark_vocabulary().tokens)
    chips, auxiliary = render.prompt_html(explanation, benchmark_words=True)
    for rows in (explanation.prompt_dataset_tokens, explanation.auxiliary_dataset_tokens):
        assert rows and all(match.token in words for row in rows for match in row)
    assert "benchmark&#x27;s own words" in chips and "benchmark&#x27;s own words" in auxiliary
