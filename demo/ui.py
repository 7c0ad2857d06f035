"""The Gradio layout: query, results, decoded prompt, attention maps, comparison, failure inspection.

Every event calls the one `Engine` and hands its dataclasses to `demo.render`. Per-user
data (the reference's gallery id, the benchmark ground truth, the last result) lives
in a `gr.State`, so concurrent users never see each other's queries. Every event has
an `api_name`; `/search` takes an image file, a caption and k and answers JSON.

Gallery images reach the page as pixels the engine decoded (`Engine.gallery_image`), which
gradio writes into its own cache: the server serves no folder of the gallery, the data
root or an index, whatever their files or links name.
"""
# No `from __future__ import annotations`: gradio reads the handlers' annotations (gr.SelectData).
import base64
import dataclasses
import functools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image
from starlette.middleware import Middleware

from cir_core.engine import BenchmarkQuery, BenchmarkReport, Engine, QueryError, RetrievalResult
from demo import render

logger = logging.getLogger(__name__)

MAX_K = 50
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # one uploaded image, however it arrives (file, data URL)
# A data URL's base64 text is 4/3 of its bytes; the request around it (JSON, other fields) stays well under a MB.
MAX_REQUEST_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + (1 << 20)
CACHE_CLEANUP = (600, 3600)  # every 10 minutes, delete uploads and shown images older than an hour
RESULT_SIDE = 256  # longest side of a result thumbnail, pixels
REFERENCE_SIDE = 512  # longest side of a gallery image shown as the reference
EXAMPLE_SIDE = 128  # longest side of an example's thumbnail
NO_REFERENCE = "Reference: upload an image or pick one below."
EXAMPLES_PER_GROUP = 2  # benchmark examples shown per query group when no curated list matches the gallery
FAILURES_SHOWN = 60  # failure rows drawn at once (the JSON answer lists them all)
CSS = """
.cir-chip-row {display: flex; flex-wrap: wrap; align-items: center; gap: 4px; margin: 2px 0;}
.cir-chip {border-radius: 10px; padding: 1px 8px; font-family: monospace; color: #111;}
.cir-position {width: 2.5em; font-weight: bold;}
.cir-caption-row {display: flex; flex-wrap: wrap; gap: 24px;}
.cir-captions {flex: 1 1 360px;}
.cir-captions ol {margin: 4px 0 0 1.2em; padding: 0;}
.cir-similarity {font-family: monospace; color: #555; margin-left: 6px;}
.cir-similarity span {display: inline-block; height: 0.6em; background: #f59e0b; margin-right: 4px; max-width: 60px;}
"""


@dataclass
class ViewState:
    """Per-user state of the app."""

    reference_id: str | None = None  # gallery id of the reference when picked from the gallery
    ground_truth_id: str | None = None  # the target of a benchmark query, when one was loaded
    result: RetrievalResult | None = None  # the last search result (with its explanation)


def uploaded_reference(payload) -> str | bytes | None:
    """The reference as uploaded: the file of an unprocessed gr.Image payload, or a base64 data URL's bytes,
    each at most MAX_UPLOAD_BYTES (QueryError otherwise, before anything is decoded).

    Events reading the reference skip gradio's preprocessing (preprocess=False), which
    would open the file itself and fail with a bare "Error" on corrupt files or
    decompression bombs; the engine's checks give messages that name the problem. Paths
    are still confined to gradio's upload folder, which gradio checks before any handler;
    gradio's max_file_size bounds uploaded files, not data URLs in a request's body.
    """
    if not payload:
        return None
    if not isinstance(payload, dict):
        raise QueryError(f"the image must be an uploaded file (a gradio file payload), got {type(payload).__name__}")
    too_large = f"the image is larger than the {MAX_UPLOAD_BYTES // (1 << 20)} MB upload limit"
    if payload.get("path"):
        path = payload["path"]
        if isinstance(path, str) and os.path.isfile(path) and os.path.getsize(path) > MAX_UPLOAD_BYTES:
            raise QueryError(too_large)
        return path
    url = payload.get("url") or ""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    header, _, encoded = url.partition(",")
    if not header.endswith(";base64"):
        raise QueryError("an image given as a data: URL must be base64 encoded (data:image/png;base64,...)")
    if len(encoded) > 4 * math.ceil(MAX_UPLOAD_BYTES / 3):  # base64 length is known before decoding
        raise QueryError(too_large)
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise QueryError("the data: URL's image is not valid base64") from None


def whole_number(value, what: str, low: int, high: int) -> int:
    """`value` as an int in [low, high]; QueryError (a message, not a traceback) for anything else."""
    shown = f"{value!r:.50}"  # an int of 10**400 has 401 digits
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QueryError(f"{what} must be a whole number, got {shown}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise QueryError(f"{what} must be a whole number, got {shown}")
    if not low <= value <= high:  # compared as given: float() of a huge int overflows
        raise QueryError(f"{what} must be between {low} and {high}, got {shown}")
    return int(value)


def user_errors(handler):
    """Show bad input as a visible error message; the app keeps serving.

    Bad input is the user's to fix: the server logs one line for it, no traceback. An
    unexpected failure logs its traceback once (here, not again by gradio).
    """

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (QueryError, ValueError, FileNotFoundError) as error:
            logger.info("%s refused: %s", handler.__name__, f"{error}"[:300])
            raise gr.Error(str(error), title="Cannot run this query", print_exception=False) from None
        except Exception as error:
            logger.exception("unexpected failure in %s", handler.__name__)
            raise gr.Error(f"internal error ({type(error).__name__}): {error}", print_exception=False) from None

    return wrapped


def load_curated_examples(path: str | Path | None) -> list[dict]:
    """The entries of a curated examples file ({"queries": [{pairid, reference, target, caption}, ...]})."""
    if path is None or not Path(path).is_file():
        return []
    try:
        entries = json.loads(Path(path).read_text()).get("queries", [])
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("ignoring the examples file %s: %s", path, error)
        return []
    return [entry for entry in entries if isinstance(entry, dict)]


def choose_examples(queries: list[BenchmarkQuery], curated: list[dict], groups: list[str]) -> list[BenchmarkQuery]:
    """The curated queries that match this gallery's benchmark exactly, else a few per group
    (in the order of `groups`, view angle first; a query is shown once).

    A curated entry matches when its pairid, reference, target and caption are those of a
    benchmark query, so examples never point at the wrong images of another benchmark.
    """
    by_pairid = {q.pairid: q for q in queries}
    chosen = []
    for entry in curated:
        query = by_pairid.get(str(entry.get("pairid")))
        if query is not None and (query.reference_id, query.target_id, query.caption) == (
                entry.get("reference"), entry.get("target"), entry.get("caption")):
            chosen.append(query)
    if chosen:
        return chosen
    shown: dict[str, BenchmarkQuery] = {}
    for group in groups:
        members = [q for q in queries if group in q.groups and q.pairid not in shown]
        shown.update((q.pairid, q) for q in members[:EXAMPLES_PER_GROUP])
    return list(shown.values()) or queries[:EXAMPLES_PER_GROUP]


def build_ui(engine: Engine, examples_file: str | Path | None = None, title: str = "SPRC composed image retrieval"
             ) -> gr.Blocks:
    """The whole app as gr.Blocks (call .queue() and .launch() on it, as app.py does)."""
    groups = engine.group_names()
    examples = choose_examples(engine.benchmark_queries(), load_curated_examples(examples_file), groups)
    num_prompt_tokens = engine.model.num_query_tokens

    with gr.Blocks(title=title, delete_cache=CACHE_CLEANUP) as app:
        state = gr.State(ViewState())
        gr.Markdown(f"# {title}\n{engine.summary()}. "
                    "Give a reference image and a relative caption (\"make the circle red\").")
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(label="Reference image", sources=["upload", "clipboard", "webcam"],
                                           type="filepath", image_mode=None, height=260, elem_id="reference",
                                           format="png")  # gallery pictures as they are, not lossy webp
                reference_info = gr.Markdown(NO_REFERENCE, elem_id="reference-info")
                caption = gr.Textbox(label="Relative caption", placeholder="e.g. make the red circle large",
                                     max_lines=4, elem_id="caption")
                top_k = gr.Slider(1, MAX_K, value=10, step=1, label="Top k")
                has_prompt = engine.model.config.query_mode == "sprc"  # baselines have no prompt to explain
                explain = gr.Checkbox(value=has_prompt, interactive=has_prompt,
                                      label="Explanations (prompt tokens, attention, relevance)"
                                      + ("" if has_prompt else f": not for query mode {engine.model.config.query_mode}"))
                search_button = gr.Button("Search", variant="primary", elem_id="search")
                with gr.Accordion("Pick a reference from the gallery", open=False):
                    # custom values reach the handler, which names the bad id (gradio's own check
                    # answers with every id of the gallery)
                    gallery_pick = gr.Dropdown(choices=engine.gallery_ids, label="Gallery image id",
                                               value=None, filterable=True, allow_custom_value=True)
                examples_table = gr.Dataset(
                    label="Benchmark examples (click to load; the target is marked in the results)",
                    components=["image", "textbox", "textbox"],
                    headers=["reference", "caption", "groups"], type="index",
                    samples=[[engine.gallery_image(q.reference_id, EXAMPLE_SIDE), q.caption, ", ".join(q.groups)]
                             for q in examples],
                    samples_per_page=8, visible=bool(examples))
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="summary")
                results = gr.Gallery(label="Results (click one to make it the new reference)", columns=5,
                                     height=420, allow_preview=False, elem_id="results", format="png")
                with gr.Accordion("Latency per stage and raw JSON", open=False):
                    latency = gr.Markdown()
                    raw_json = gr.JSON(label="/search answer")
        with gr.Tabs():
            with gr.Tab("Sentence prompt"):
                prompt_captions = gr.HTML(elem_id="prompt-captions")
                token_vocabulary = gr.Radio(["all words", "this benchmark's words"], value="all words",
                                            label="Decode the prompt vectors with", visible=bool(groups),
                                            elem_id="token-vocabulary")
                prompt_chips = gr.HTML(elem_id="prompt-chips")
                auxiliary_chips = gr.HTML(elem_id="auxiliary-chips")
            with gr.Tab("Attention maps"):
                with gr.Row():
                    average_map = gr.Image(label="Mean attention of the prompt tokens over the reference",
                                           type="pil", interactive=False, elem_id="attention-average")
                    with gr.Column():
                        token_choice = gr.Slider(1, num_prompt_tokens, value=1, step=1, label="Prompt token")
                        token_map = gr.Image(label="Selected prompt token over the reference", type="pil",
                                             interactive=False)
                    with gr.Column():
                        relevance_choice = gr.Dropdown(label="Result to explain", choices=[], value=None,
                                                       allow_custom_value=True)
                        relevance_map = gr.Image(label="Relevance of the result's patches for its score",
                                                 type="pil", interactive=False)
            with gr.Tab("Compare"):
                compare_button = gr.Button("Compare text-only, image-only and SPRC")
                compare_summary = gr.Markdown()
                with gr.Row():
                    compare_galleries = [gr.Gallery(label=name, columns=2, height=360, allow_preview=False,
                                                    format="png") for name in ("text-only", "image-only", "SPRC")]
            with gr.Tab("Failure inspection"):
                gr.Markdown("Recall per query group and the benchmark queries whose target is not ranked first "
                            "(every query is ranked once, then cached). View-angle queries come first. Each row: "
                            "the caption, the reference, the target with its rank, the first three results. "
                            "Click a row to load it into the query views."
                            if groups else "This gallery has no benchmark: start the app with --dataset.")
                with gr.Row():
                    group_filter = gr.Dropdown(choices=[("all", ""), *[(name, name) for name in groups]], value="",
                                               label="Query group", elem_id="group-filter")
                    keyword = gr.Textbox(label="Caption keyword", elem_id="failure-keyword")
                    find_button = gr.Button("Find failures", elem_id="find-failures")
                failure_count = gr.Markdown(elem_id="failure-count")
                group_table = gr.Dataframe(headers=render.GROUP_HEADERS, interactive=False, elem_id="group-recall")
                failures = gr.Gallery(label="Failures (click one to load it)", columns=3, height=760,
                                      allow_preview=False, object_fit="contain", elem_id="failures")
                with gr.Accordion("/benchmark answer (JSON)", open=False):
                    benchmark_json = gr.JSON(label="/benchmark answer")
                failure_ids = gr.State([])
                failure_report = gr.State(None)  # the report one click computed, for its cards

        # -------------------------------------------------------------- handlers
        def thumbnail(image_id: str) -> Image.Image:
            try:
                return engine.gallery_image(image_id, RESULT_SIDE)
            except QueryError as error:  # a file gone or changed since indexing: the other results still show
                logger.warning("cannot show gallery image %s: %s", image_id, error)
                return render.missing_picture(RESULT_SIDE)

        def failure_thumbnail(image_id: str) -> Image.Image:
            return engine.gallery_image(image_id, render.THUMB)

        def reference_outputs(image_id: str):
            label = engine.gallery_label(image_id)
            info = f"Reference: gallery image `{image_id}`" + (f" ({label})" if label else "")
            return engine.gallery_image(image_id, REFERENCE_SIDE), info

        @user_errors
        def run_search(image, text, k, with_explanations, view: ViewState):
            source = view.reference_id or uploaded_reference(image)
            if source is None:
                raise QueryError("no reference image: upload one, paste one or pick one from the gallery")
            result = engine.search(source, text, whole_number(k, "k", 1, MAX_K), explain=bool(with_explanations),
                                   ground_truth_id=view.ground_truth_id)
            for note in result.notes:
                gr.Warning(note)
            return result.to_json(), dataclasses.replace(view, result=result)

        def show_result(view: ViewState, token, vocabulary):
            result = view.result
            if result is None:
                return [gr.skip()] * 10
            truth_id = result.ground_truth.id if result.ground_truth else None
            chips, auxiliary = render.prompt_html(result.explanation, vocabulary == "this benchmark's words")
            captions = render.captions_html(result.explanation, truth_id)
            explanation = result.explanation
            average = token_image = relevance = None
            if explanation is not None:
                average = render.attention_overlay(explanation, engine.transform, None)
                token_image = render.attention_overlay(explanation, engine.transform, int(token) - 1)
                if explanation.relevance is not None:
                    relevance = render.relevance_overlay(
                        engine.gallery_image(explanation.relevance_id), explanation.relevance.grid,
                        engine.transform, explanation.relevance_id, explanation.relevance.score)
            hit_ids = [hit.id for hit in result.hits]
            choice = gr.update(choices=hit_ids, value=explanation.relevance_id if explanation else None)
            return (render.result_summary(result), render.gallery_items(result.hits, thumbnail, truth_id),
                    render.latency_markdown(result.timings), captions, chips, auxiliary, average, token_image, choice,
                    relevance)

        def show_tokens(view: ViewState, vocabulary):
            explanation = view.result.explanation if view.result is not None else None
            return render.prompt_html(explanation, vocabulary == "this benchmark's words")[0]

        @user_errors
        def show_token(view: ViewState, token):
            if view.result is None or view.result.explanation is None:
                return None
            token = whole_number(token, "the prompt token", 1, num_prompt_tokens)
            return render.attention_overlay(view.result.explanation, engine.transform, token - 1)

        @user_errors
        def explain_result(view: ViewState, result_id):
            if not result_id:
                return gr.skip()
            if view.result is None:
                raise QueryError("search first: the relevance map explains a result of your last search")
            explanation = view.result.explanation
            if explanation is not None and explanation.relevance_id == result_id:
                grid, score = explanation.relevance.grid, explanation.relevance.score
            else:
                relevance = engine.relevance(view.result.query_vector, result_id)
                grid, score = relevance.grid, relevance.score
            return render.relevance_overlay(engine.gallery_image(result_id), grid, engine.transform, result_id, score)

        @user_errors
        def use_result_as_reference(view: ViewState, event: gr.SelectData):
            if view.result is None or event.index is None or event.index >= len(view.result.hits):
                return gr.skip(), gr.skip(), view
            image_id = view.result.hits[event.index].id
            image, info = reference_outputs(image_id)
            return (image, info + " (from the results: type a new caption to refine)",
                    dataclasses.replace(view, reference_id=image_id, ground_truth_id=None))

        @user_errors
        def pick_from_gallery(image_id, view: ViewState):
            if not image_id:
                return gr.skip(), gr.skip(), view
            if not isinstance(image_id, str) or image_id not in engine.gallery_ids:
                raise QueryError(f"{str(image_id)[:80]!r} is not an image of the gallery")
            image, info = reference_outputs(image_id)
            return image, info, dataclasses.replace(view, reference_id=image_id, ground_truth_id=None)

        def forget_gallery_reference(view: ViewState):
            return "Reference: your image", dataclasses.replace(view, reference_id=None, ground_truth_id=None)

        def clear_reference(view: ViewState):
            return NO_REFERENCE, dataclasses.replace(view, reference_id=None, ground_truth_id=None)

        def load_query(query: BenchmarkQuery):
            image, info = reference_outputs(query.reference_id)
            groups = f" ({', '.join(query.groups)})" if query.groups else ""
            info += f"; benchmark query {query.pairid}{groups}, target `{query.target_id}`"
            return image, info, query.caption, ViewState(reference_id=query.reference_id,
                                                         ground_truth_id=query.target_id)

        @user_errors
        def load_example(index):
            return load_query(examples[whole_number(index, "the example number", 0, len(examples) - 1)])

        @user_errors
        def run_compare(image, text, k, view: ViewState):
            source = view.reference_id or uploaded_reference(image)
            if source is None:
                raise QueryError("no reference image: upload one, paste one or pick one from the gallery")
            comparison = engine.compare(source, text, whole_number(k, "k", 1, MAX_K),
                                        ground_truth_id=view.ground_truth_id)
            return (render.comparison_summary(comparison), *render.comparison_galleries(comparison, thumbnail))

        @user_errors
        def benchmark(group, word):
            """JSON: recall per group and the failures of `group` with `word` in the caption ("" = any)."""
            if group is not None and not isinstance(group, str) or word is not None and not isinstance(word, str):
                raise QueryError("group and keyword must be text (\"\" for any)")
            report = engine.benchmark_report(group=group or None, keyword=word or None)
            return report.to_json(), report

        @user_errors
        def show_failures(report: BenchmarkReport):
            shown = report.failures[:FAILURES_SHOWN]
            return (render.failure_count_line(report, len(shown)), render.group_rows(report),
                    render.failure_gallery(shown, failure_thumbnail), [case.query.pairid for case in shown])

        @user_errors
        def load_failure(pairids, event: gr.SelectData):
            row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            by_pairid = {q.pairid: q for q in engine.benchmark_queries()}
            if row is None or row >= len(pairids) or pairids[row] not in by_pairid:
                raise QueryError("that row is not a benchmark query of this gallery")
            return load_query(by_pairid[pairids[row]])

        # -------------------------------------------------------------- wiring
        query_inputs = [reference, caption, top_k, explain, state]
        view_outputs = [summary, results, latency, prompt_captions, prompt_chips, auxiliary_chips, average_map,
                        token_map, relevance_choice, relevance_map]
        view_inputs = [state, token_choice, token_vocabulary]
        search_outputs = [raw_json, state]
        search_button.click(run_search, query_inputs, search_outputs, api_name="search", preprocess=False).success(
            show_result, view_inputs, view_outputs, api_name="show_result", api_visibility="undocumented")
        caption.submit(run_search, query_inputs, search_outputs, api_name="search_on_enter",
                       api_visibility="undocumented", preprocess=False).success(
            show_result, view_inputs, view_outputs, api_name="show_result_on_enter",
            api_visibility="undocumented")
        token_choice.release(show_token, [state, token_choice], token_map, api_name="attention_token")
        token_vocabulary.input(show_tokens, [state, token_vocabulary], prompt_chips, api_name="prompt_tokens")
        relevance_choice.input(explain_result, [state, relevance_choice], relevance_map, api_name="relevance")
        results.select(use_result_as_reference, [state], [reference, reference_info, state],
                       api_name="use_result_as_reference")
        gallery_pick.input(pick_from_gallery, [gallery_pick, state], [reference, reference_info, state],
                           api_name="pick_gallery_image")
        reference.input(forget_gallery_reference, [state], [reference_info, state], api_name="new_reference")
        reference.clear(clear_reference, [state], [reference_info, state], api_name="clear_reference")
        examples_table.click(load_example, [examples_table], [reference, reference_info, caption, state],
                             api_name="load_example")
        compare_button.click(run_compare, [reference, caption, top_k, state], [compare_summary, *compare_galleries],
                             api_name="compare", preprocess=False)
        find_button.click(benchmark, [group_filter, keyword], [benchmark_json, failure_report],
                          api_name="benchmark").success(
            show_failures, [failure_report], [failure_count, group_table, failures, failure_ids],
            api_name="failures", api_visibility="undocumented")
        failures.select(load_failure, [failure_ids], [reference, reference_info, caption, state],
                        api_name="load_failure").success(
            run_search, query_inputs, search_outputs, api_name="search_failure", api_visibility="undocumented",
            preprocess=False).success(show_result, view_inputs, view_outputs, api_name="show_failure",
                  api_visibility="undocumented")
    return app


class RequestTooLarge(Exception):
    """A request body grew past RequestSizeLimit's bound while it was being read."""


class RequestSizeLimit:
    """ASGI middleware: a request whose body exceeds `max_bytes` is answered 413 before more of it is read.

    gradio bounds uploaded files (max_file_size), not other bodies: an image sent as a data
    URL inside a /search request would otherwise be read whole, however large.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received, started = 0, False

        async def bounded_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a body sent without a length (chunked)
                raise RequestTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except RequestTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = f"request body too large: at most {self.max_bytes} bytes".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def launch(engine: Engine, examples_file: str | Path | None = None, server_name: str = "127.0.0.1",
           server_port: int | None = None, concurrency: int = 4, max_file_size: int = MAX_UPLOAD_BYTES,
           prevent_thread_lock: bool = False) -> gr.Blocks:
    """Build the app, set its queue and serve it; the one launch path for app.py and the tests."""
    app = build_ui(engine, examples_file=examples_file)
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    # No allowed_paths: every image the page shows is one gradio wrote into its own cache.
    app.launch(server_name=server_name, server_port=server_port, max_file_size=max_file_size,
               prevent_thread_lock=prevent_thread_lock, css=CSS, quiet=True,
               app_kwargs={"middleware": [Middleware(RequestSizeLimit, max_bytes=MAX_REQUEST_BYTES)]},
               # errors gradio raises before a handler (e.g. a malformed file payload) say what they are
               show_error=True)
    return app
