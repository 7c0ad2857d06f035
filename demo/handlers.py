"""The app's event handlers: module-level functions of the engine and the event's inputs.

Each takes the `Engine` first (and, where it needs them, the app's examples or start-up
schedule); `bind` fixes those for gradio, keeping the signature gradio reads for the rest
(gr.SelectData is injected by its annotation). Handlers call the engine, hand its
dataclasses to `demo.render` and never touch the model. Per-user data lives in a
`ViewState` held by gr.State, so concurrent users never see each other's queries.
"""
# No `from __future__ import annotations`: gradio reads the handlers' annotations (gr.SelectData).
import dataclasses
import functools
import inspect
import logging
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from cir_core.engine import Engine
from cir_core.evaluation.failures import BenchmarkQuery, BenchmarkReport
from cir_core.inputs import QueryError
from cir_core.results import Comparison, RetrievalResult
from demo import render
from demo.requests import uploaded_reference, user_errors, whole_number
from demo.startup import AfterFirstAnswer

logger = logging.getLogger(__name__)

MAX_K = 50
RESULT_SIDE = 256  # longest side of a result thumbnail, pixels
REFERENCE_SIDE = 512  # longest side of a gallery image shown as the reference
EXAMPLE_SIDE = 128  # longest side of an example's thumbnail
NO_REFERENCE = "Reference: upload an image or pick one below."
MAX_ID_CHARS = 256  # a typed gallery id longer than this is refused before it is looked up (and echoed)
FAILURES_SHOWN = 60  # failure cards drawn at once (the JSON answer lists them all)
BENCHMARK_WORDS = "this benchmark's words"
VOCABULARIES = ("all words", BENCHMARK_WORDS)  # what the prompt's vectors can be decoded with


@dataclass
class ViewState:
    """Per-user state of the app."""

    reference_id: str | None = None  # gallery id of the reference when picked from the gallery
    ground_truth_id: str | None = None  # the target of a benchmark query, when one was loaded
    result: RetrievalResult | None = None  # the last search result (with its explanation)
    comparison: Comparison | None = None  # the last comparison of text-only, image-only and the model's query


def bind(handler, *bound):
    """`handler` with its first arguments fixed, as a function whose signature and annotations
    are those of the remaining parameters (what gradio inspects)."""
    @functools.wraps(handler)
    def bound_handler(*args, **kwargs):
        return handler(*bound, *args, **kwargs)

    signature = inspect.signature(handler)
    remaining = list(signature.parameters.values())[len(bound):]
    bound_handler.__signature__ = signature.replace(parameters=remaining)
    bound_handler.__annotations__ = {name: hint for name, hint in handler.__annotations__.items()
                                     if name in {p.name for p in remaining} or name == "return"}
    del bound_handler.__wrapped__  # gradio would otherwise read the full signature through it
    return bound_handler


# ---------------------------------------------------------------------- pictures
def thumbnail(engine: Engine, image_id: str) -> Image.Image:
    try:
        return engine.gallery_image(image_id, RESULT_SIDE)
    except QueryError as error:  # a file gone or changed since indexing: the other results still show
        logger.warning("cannot show gallery image %s: %s", image_id, error)
        return render.missing_picture(RESULT_SIDE)


def reference_outputs(engine: Engine, image_id: str):
    label = engine.gallery_label(image_id)
    info = f"Reference: gallery image `{image_id}`" + (f" ({label})" if label else "")
    return engine.gallery_image(image_id, REFERENCE_SIDE), info


# ---------------------------------------------------------------------- search and its views
@user_errors
def run_search(engine: Engine, startup: AfterFirstAnswer, image, text, k, with_explanations, view: ViewState):
    source = view.reference_id or uploaded_reference(image)
    if source is None:
        raise QueryError("no reference image: upload one, paste one or pick one from the gallery")
    result = engine.search(source, text, whole_number(k, "k", 1, MAX_K), explain=bool(with_explanations),
                           ground_truth_id=view.ground_truth_id)
    startup.answered()
    for note in result.notes:
        gr.Warning(note)
    return result.to_json(), dataclasses.replace(view, result=result)


def show_result(engine: Engine, view: ViewState, token, vocabulary):
    result = view.result
    if result is None:
        return [gr.skip()] * 10
    truth_id = result.ground_truth.id if result.ground_truth else None
    explanation = result.explanation
    chips, auxiliary = render.prompt_html(explanation, vocabulary == BENCHMARK_WORDS)
    captions = render.captions_html(explanation, truth_id)
    average = token_image = relevance = None
    if explanation is not None:
        average = render.attention_overlay(explanation, None)
        token_image = render.attention_overlay(explanation, int(token) - 1)
        if explanation.relevance is not None:
            relevance = render.relevance_overlay(explanation.relevance, explanation.relevance_id)
    choice = gr.update(choices=[hit.id for hit in result.hits],
                       value=explanation.relevance_id if explanation else None)
    pictures = functools.partial(thumbnail, engine)
    return (render.result_summary(result), render.gallery_items(result.hits, pictures, truth_id),
            render.latency_markdown(result.timings), captions, chips, auxiliary, average, token_image, choice,
            relevance)


@user_errors
def show_tokens(view: ViewState, vocabulary):
    """Both prompts' chips, decoded with the vocabulary chosen."""
    if vocabulary not in VOCABULARIES:
        raise QueryError(f"the vocabulary must be one of {', '.join(map(repr, VOCABULARIES))}, got {vocabulary!r:.80}")
    explanation = view.result.explanation if view.result is not None else None
    return render.prompt_html(explanation, vocabulary == BENCHMARK_WORDS)


@user_errors
def show_token(engine: Engine, view: ViewState, token):
    token = whole_number(token, "the prompt token", 1, engine.model_summary().prompt_tokens)
    if view.result is None or view.result.explanation is None:
        return None
    return render.attention_overlay(view.result.explanation, token - 1)


@user_errors
def explain_result(engine: Engine, view: ViewState, result_id):
    if not result_id:
        return gr.skip()
    if view.result is None:
        raise QueryError("search first: the relevance map explains a result of your last search")
    explanation = view.result.explanation
    if explanation is not None and explanation.relevance_id == result_id:
        relevance = explanation.relevance
    else:
        relevance = engine.relevance(view.result.query_vector, result_id)
    return render.relevance_overlay(relevance, result_id)


@user_errors
def run_compare(engine: Engine, image, text, k, view: ViewState):
    source = view.reference_id or uploaded_reference(image)
    if source is None:
        raise QueryError("no reference image: upload one, paste one or pick one from the gallery")
    comparison = engine.compare(source, text, whole_number(k, "k", 1, MAX_K), ground_truth_id=view.ground_truth_id)
    return comparison.to_json(), dataclasses.replace(view, comparison=comparison)


def show_comparison(engine: Engine, view: ViewState):
    if view.comparison is None:
        return [gr.skip()] * 4
    return (render.comparison_summary(view.comparison),
            *render.comparison_galleries(view.comparison, functools.partial(thumbnail, engine)))


# ---------------------------------------------------------------------- choosing a reference
@user_errors
def use_result_as_reference(engine: Engine, view: ViewState, event: gr.SelectData):
    if view.result is None or event.index is None or event.index >= len(view.result.hits):
        return gr.skip(), gr.skip(), view
    image_id = view.result.hits[event.index].id
    image, info = reference_outputs(engine, image_id)
    return (image, info + " (from the results: type a new caption to refine)",
            dataclasses.replace(view, reference_id=image_id, ground_truth_id=None))


@user_errors
def pick_from_gallery(engine: Engine, image_id, view: ViewState):
    """The gallery image whose id was typed becomes the reference (the engine names an unknown id)."""
    if image_id is not None and not isinstance(image_id, str):
        raise QueryError(f"a gallery image id is text, got {type(image_id).__name__}")
    image_id = (image_id or "").strip()
    if not image_id:
        return gr.skip(), gr.skip(), view
    if len(image_id) > MAX_ID_CHARS:
        raise QueryError(f"a gallery image id has at most {MAX_ID_CHARS} characters, got {len(image_id)}")
    image, info = reference_outputs(engine, image_id)
    return image, info, dataclasses.replace(view, reference_id=image_id, ground_truth_id=None)


def forget_gallery_reference(view: ViewState):
    return "Reference: your image", dataclasses.replace(view, reference_id=None, ground_truth_id=None)


def clear_reference(view: ViewState):
    return NO_REFERENCE, dataclasses.replace(view, reference_id=None, ground_truth_id=None)


def load_query(engine: Engine, query: BenchmarkQuery):
    image, info = reference_outputs(engine, query.reference_id)
    groups = f" ({', '.join(query.groups)})" if query.groups else ""
    info += f"; benchmark query {query.pairid}{groups}, target `{query.target_id}`"
    return image, info, query.caption, ViewState(reference_id=query.reference_id, ground_truth_id=query.target_id)


@user_errors
def load_example(engine: Engine, examples: list[BenchmarkQuery], index):
    return load_query(engine, examples[whole_number(index, "the example number", 0, len(examples) - 1)])


# ---------------------------------------------------------------------- failure inspection
@user_errors
def benchmark(engine: Engine, group, keyword):
    """JSON: recall per group and the failures of `group` with `keyword` in the caption ("" = any)."""
    if group is not None and not isinstance(group, str) or keyword is not None and not isinstance(keyword, str):
        raise QueryError("group and keyword must be text (\"\" for any)")
    report = engine.benchmark_report(group=group or None, keyword=keyword or None)
    return report.to_json(), report


@user_errors
def show_failures(engine: Engine, report: BenchmarkReport):
    shown = report.failures[:FAILURES_SHOWN]
    pictures = functools.partial(engine.gallery_image, max_side=render.THUMB)
    cards = render.failure_gallery(shown, pictures)
    return (render.failure_count_line(report, len(shown)), render.group_rows(report),
            gr.update(value=cards, visible=bool(cards)), [case.query.pairid for case in shown])


@user_errors
def open_failures(engine: Engine, group, keyword, shown: BenchmarkReport | None):
    """The report of the filter as set (the first group's when the page opens), the first time the
    failure view is opened; nothing once a report is shown."""
    if shown is not None:
        return [gr.skip()] * 6
    answer, report = benchmark(engine, group, keyword)
    return (answer, report, *show_failures(engine, report))


@user_errors
def load_failure(engine: Engine, pairids, event: gr.SelectData):
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    by_pairid = {q.pairid: q for q in engine.benchmark_queries()}
    if row is None or row >= len(pairids) or pairids[row] not in by_pairid:
        raise QueryError("that card is not a benchmark query of this gallery")
    return load_query(engine, by_pairid[pairids[row]])
