"""The Gradio layout: query, results, decoded prompt, attention maps, comparison, failure inspection.

Every event calls the one `Engine` and hands its dataclasses to `demo.render`. Per-user
data (the reference's gallery id, the benchmark ground truth, the last result) lives
in a `gr.State`, so concurrent users never see each other's queries. Every event has
an `api_name`; `/search` takes an image file, a caption and k and answers JSON.

Gallery images reach the page as pixels the engine decoded (`Engine.gallery_image`), which
gradio writes into its own cache: the server serves no folder of the gallery, the data
root or an index, whatever their files or links name.
"""
import json
import logging
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from cir_core.engine import Engine
from cir_core.evaluation.failures import BenchmarkQuery
from demo import handlers as on
from demo import render
from demo.handlers import BENCHMARK_WORDS, EXAMPLE_SIDE, MAX_K, NO_REFERENCE, ViewState, bind
from demo.requests import MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, RequestSizeLimit
from demo.startup import AfterFirstAnswer

logger = logging.getLogger(__name__)

CACHE_CLEANUP = (600, 3600)  # every 10 minutes, delete uploads and shown images older than an hour
EXAMPLES_PER_GROUP = 2  # benchmark examples shown per query group when no curated list matches the gallery
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


def build_ui(engine: Engine, examples_file: str | Path | None = None, title: str = "SPRC composed image retrieval",
             startup: AfterFirstAnswer | None = None) -> gr.Blocks:
    """The whole app as gr.Blocks (call .queue() and .launch() on it, as app.py does); `startup`
    holds the work that waits for the first answer."""
    startup = startup if startup is not None else AfterFirstAnswer()
    groups = engine.group_names()
    examples = choose_examples(engine.benchmark_queries(), load_curated_examples(examples_file), groups)
    model = engine.model_summary()

    with gr.Blocks(title=title, delete_cache=CACHE_CLEANUP) as app:
        state = gr.State(ViewState())
        trained_with = (" Trained with an image-description contrastive term besides the paper's losses "
                        "(see docs/fidelity.md)." if model.description_weight > 0 else "")
        # The hint quotes a caption of the benchmark served, never another benchmark's words.
        sample = examples[0].caption[:80] if examples else "make it red"
        gr.Markdown(f"# {title}\n{engine.summary()}.{trained_with} "
                    f"Give a reference image and a relative caption (\"{sample}\").")
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(label="Reference image", sources=["upload", "clipboard", "webcam"],
                                           type="filepath", image_mode=None, height=260, elem_id="reference",
                                           format="png")  # gallery pictures as they are, not lossy webp
                reference_info = gr.Markdown(NO_REFERENCE, elem_id="reference-info")
                caption = gr.Textbox(label="Relative caption", placeholder=f"e.g. {sample}",
                                     max_lines=4, elem_id="caption")
                top_k = gr.Slider(1, MAX_K, value=10, step=1, label="Top k")
                explain = gr.Checkbox(value=model.explainable, interactive=model.explainable,  # baselines have no prompt
                                      label="Explanations (prompt tokens, attention, relevance)"
                                      + ("" if model.explainable else f": not for query mode {model.query_mode}"))
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
                # A benchmark's own words by default: the whole vocabulary rarely means anything here.
                token_vocabulary = gr.Radio(["all words", BENCHMARK_WORDS], value=BENCHMARK_WORDS if groups
                                            else "all words",
                                            label="Decode the prompt vectors with", visible=bool(groups),
                                            elem_id="token-vocabulary")
                prompt_chips = gr.HTML(elem_id="prompt-chips")
                auxiliary_chips = gr.HTML(elem_id="auxiliary-chips")
            with gr.Tab("Attention maps"):
                with gr.Row():
                    average_map = gr.Image(label="Mean attention of the prompt tokens over the reference",
                                           type="pil", interactive=False, elem_id="attention-average")
                    with gr.Column():
                        token_choice = gr.Slider(1, model.prompt_tokens, value=1, step=1, label="Prompt token")
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

        # -------------------------------------------------------------- wiring
        query_inputs = [reference, caption, top_k, explain, state]
        view_outputs = [summary, results, latency, prompt_captions, prompt_chips, auxiliary_chips, average_map,
                        token_map, relevance_choice, relevance_map]
        view_inputs = [state, token_choice, token_vocabulary]
        search_outputs = [raw_json, state]
        search_button.click(bind(on.run_search, engine, startup), query_inputs, search_outputs, api_name="search", preprocess=False).success(
            bind(on.show_result, engine), view_inputs, view_outputs, api_name="show_result", api_visibility="undocumented")
        caption.submit(bind(on.run_search, engine, startup), query_inputs, search_outputs, api_name="search_on_enter",
                       api_visibility="undocumented", preprocess=False).success(
            bind(on.show_result, engine), view_inputs, view_outputs, api_name="show_result_on_enter",
            api_visibility="undocumented")
        token_choice.release(bind(on.show_token, engine), [state, token_choice], token_map, api_name="attention_token")
        token_vocabulary.input(on.show_tokens, [state, token_vocabulary], [prompt_chips, auxiliary_chips],
                               api_name="prompt_tokens")
        relevance_choice.input(bind(on.explain_result, engine), [state, relevance_choice], relevance_map, api_name="relevance")
        results.select(bind(on.use_result_as_reference, engine), [state], [reference, reference_info, state],
                       api_name="use_result_as_reference")
        gallery_pick.input(bind(on.pick_from_gallery, engine), [gallery_pick, state], [reference, reference_info, state],
                           api_name="pick_gallery_image")
        reference.input(on.forget_gallery_reference, [state], [reference_info, state], api_name="new_reference")
        reference.clear(on.clear_reference, [state], [reference_info, state], api_name="clear_reference")
        examples_table.click(bind(on.load_example, engine, examples), [examples_table], [reference, reference_info, caption, state],
                             api_name="load_example")
        compare_button.click(bind(on.run_compare, engine), [reference, caption, top_k, state], [compare_summary, *compare_galleries],
                             api_name="compare", preprocess=False)
        find_button.click(bind(on.benchmark, engine), [group_filter, keyword], [benchmark_json, failure_report],
                          api_name="benchmark").success(
            bind(on.show_failures, engine), [failure_report], [failure_count, group_table, failures, failure_ids],
            api_name="failures", api_visibility="undocumented")
        failures.select(bind(on.load_failure, engine), [failure_ids], [reference, reference_info, caption, state],
                        api_name="load_failure").success(
            bind(on.run_search, engine, startup), query_inputs, search_outputs, api_name="search_failure",
            api_visibility="undocumented", preprocess=False).success(
            bind(on.show_result, engine), view_inputs, view_outputs, api_name="show_failure",
            api_visibility="undocumented")
    return app


def launch(engine: Engine, examples_file: str | Path | None = None, server_name: str = "127.0.0.1",
           server_port: int | None = None, concurrency: int = 4, max_file_size: int = MAX_UPLOAD_BYTES,
           prevent_thread_lock: bool = False, startup: AfterFirstAnswer | None = None) -> gr.Blocks:
    """Build the app, set its queue and serve it; the one launch path for app.py and the tests."""
    app = build_ui(engine, examples_file=examples_file, startup=startup)
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    # No allowed_paths: every image the page shows is one gradio wrote into its own cache.
    app.launch(server_name=server_name, server_port=server_port, max_file_size=max_file_size,
               prevent_thread_lock=True, css=CSS, quiet=True,
               app_kwargs={"middleware": [Middleware(RequestSizeLimit, max_bytes=MAX_REQUEST_BYTES)]},
               # errors gradio raises before a handler (e.g. a malformed file payload) say what they are
               show_error=True)
    # quiet=True hides gradio's banner (share links, analytics); the address is the one line a user needs.
    print(f"SPRC app ready at {app.local_url}", flush=True)
    if not prevent_thread_lock:
        app.block_thread()
    return app
