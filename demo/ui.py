"""The Gradio layout: query, results, decoded prompt, attention maps, comparison, failure inspection.

Every event calls the one `Engine` and hands its dataclasses to `demo.render`. Per-user
data (the reference's gallery id, the benchmark ground truth, the last result) lives
in a `gr.State`, so concurrent users never see each other's queries. Every event has
an `api_name`. The API page documents what an API client needs (`/search`, `/compare` and
`/benchmark`, which answer JSON, and `/pick_gallery_image`); the events that only update
views stay callable by name, undocumented.

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
from demo.handlers import BENCHMARK_WORDS, EXAMPLE_SIDE, MAX_K, NO_REFERENCE, VOCABULARIES, ViewState, bind
from demo.requests import MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, RequestSizeLimit
from demo.startup import AfterFirstAnswer
from demo.style import CSS, SCROLL_TO_QUERY

logger = logging.getLogger(__name__)

CACHE_CLEANUP = (600, 3600)  # every 10 minutes, delete uploads and shown images older than an hour
EXAMPLES_PER_GROUP = 2  # benchmark examples shown per query group when no curated list matches the gallery
HIDDEN = "undocumented"  # an event that only updates views: callable by name, left off the API page
SEARCH_DOC = ("Rank the gallery for a reference image and a relative caption. JSON: results (rank, id, score), "
              "ground_truth, notes, timings_ms, and explanation (null unless with_explanations: nearest captions, "
              "prompt tokens, attention and the first result's relevance grid, as numbers).")
COMPARE_DOC = ("Text-only, image-only and the model's composed query side by side. JSON: rankings, each with its "
               "name, description, results and ground_truth.")
PICK_DOC = ("Make the gallery image with this id the reference of this client's next /search and /compare "
            "(give them image=None); the id is checked against the gallery.")
BENCHMARK_DOC = ("Recall per query group and the failures of one group (\"\" for all) whose caption holds the "
                 "keyword (\"\" for any). JSON: split, queries, groups, failures.")


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
    queries = engine.benchmark_queries()
    examples = choose_examples(queries, load_curated_examples(examples_file), groups)
    model = engine.model_summary()

    with gr.Blocks(title=title, delete_cache=CACHE_CLEANUP) as app:
        state = gr.State(ViewState())
        trained_with = (" Trained with an image-description contrastive term besides the paper's losses "
                        "(see docs/fidelity.md)." if model.description_weight > 0 else "")
        # The hint quotes a caption of the benchmark served, never another benchmark's words.
        sample = examples[0].caption[:80] if examples else "make it red"
        gr.Markdown(f"# {title}\n{engine.summary()}.{trained_with} "
                    f"Give a reference image and a relative caption (\"{sample}\").")
        with gr.Row(elem_id="query-row"):
            with gr.Column(scale=1):
                reference = gr.Image(label="Reference image", sources=["upload", "clipboard", "webcam"],
                                           type="filepath", image_mode=None, height=260, elem_id="reference",
                                           format="png")  # gallery pictures as they are, not lossy webp
                reference_info = gr.Markdown(NO_REFERENCE, label="Reference source", elem_id="reference-info")
                caption = gr.Textbox(label="Relative caption", placeholder=f"e.g. {sample}",
                                     max_lines=4, elem_id="caption")
                top_k = gr.Slider(1, MAX_K, value=10, step=1, label="Top k", elem_id="top-k")
                explain = gr.Checkbox(value=model.explainable, interactive=model.explainable,  # baselines have no prompt
                                      label="Explanations (prompt tokens, attention, relevance)"
                                      + ("" if model.explainable else f": not for query mode {model.query_mode}"),
                                      elem_id="explain")
                search_button = gr.Button("Search", variant="primary", elem_id="search")
                # The documented /search: the page shows explanations by default, an API client asks for
                # them (they add a prompt decoding and a gradient pass to a search), so its own hidden
                # trigger and switch give the API its default.
                api_search = gr.Button(visible=False)
                api_explain = gr.Checkbox(value=False, visible=False, label="with_explanations")
                with gr.Accordion("Pick a reference from the gallery", open=False):
                    # Free text the engine checks: a list of every id would fill the page and the API page.
                    gallery_pick = gr.Textbox(label="Gallery image id (Enter to use it)", max_lines=1,
                                              placeholder=f"e.g. {engine.gallery_ids[0]} (ids are under the results)",
                                              elem_id="gallery-pick")
                examples_table = gr.Dataset(
                    label="Benchmark examples (click to load; the target is marked in the results)",
                    components=["image", "textbox", "textbox"],
                    headers=["reference", "caption", "groups"], type="index",
                    samples=[[engine.gallery_image(q.reference_id, EXAMPLE_SIDE), q.caption, ", ".join(q.groups)]
                             for q in examples],
                    samples_per_page=8, visible=bool(examples))
            with gr.Column(scale=2):
                summary = gr.Markdown(label="Result summary", elem_id="summary")
                results = gr.Gallery(label="Results (click one to make it the new reference)", columns=5,
                                     height="auto", allow_preview=False, elem_id="results", format="png",
                                     elem_classes=["cir-gallery"])
                with gr.Accordion("Latency per stage and raw JSON", open=False):
                    latency = gr.Markdown(label="Latency per stage")
                    raw_json = gr.JSON(label="/search answer")
        with gr.Tabs():
            with gr.Tab("Sentence prompt"):
                prompt_captions = gr.HTML(label="Captions nearest the prompt", elem_id="prompt-captions")
                # A benchmark's own words by default: the whole vocabulary rarely means anything here.
                token_vocabulary = gr.Radio(list(VOCABULARIES), value=BENCHMARK_WORDS if groups else "all words",
                                            label="Decode the prompt vectors with", visible=bool(groups),
                                            elem_id="token-vocabulary")
                prompt_chips = gr.HTML(label="Sentence-prompt tokens", elem_id="prompt-chips")
                auxiliary_chips = gr.HTML(label="Auxiliary-prompt tokens", elem_id="auxiliary-chips")
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
                compare_summary = gr.Markdown(label="Comparison summary")
                with gr.Row():
                    compare_galleries = [gr.Gallery(label=name, columns=2, height="auto", allow_preview=False,
                                                    format="png", elem_classes=["cir-gallery"])
                                         for name in ("text-only", "image-only", "SPRC")]
                with gr.Accordion("/compare answer (JSON)", open=False):
                    compare_json = gr.JSON(label="/compare answer")
            with gr.Tab("Failure inspection", elem_id="failure-tab") as failure_tab:
                gr.Markdown("Recall per query group and the benchmark queries whose target is not ranked first "
                            "(every query is ranked once, then cached). View-angle queries come first. Each card: "
                            "the reference, the target with its rank and the first three results, with the "
                            "caption under it. Click a card to load it into the query views and search it."
                            if groups else "This gallery has no benchmark: start the app with --dataset.")
                with gr.Row():
                    # Custom values reach the engine, which names the groups it has (gradio's own check
                    # would log a traceback for a bad API value). The tab opens on the first group.
                    group_filter = gr.Dropdown(choices=[("all", ""), *[(name, name) for name in groups]],
                                               value=groups[0] if groups else "", allow_custom_value=True,
                                               label="Query group", elem_id="group-filter")
                    keyword = gr.Textbox("", label="Caption keyword", elem_id="failure-keyword")
                    find_button = gr.Button("Find failures", elem_id="find-failures")
                failure_count = gr.Markdown(label="Failure count", elem_id="failure-count")
                group_table = gr.Dataframe(headers=render.GROUP_HEADERS, interactive=False, label="Recall per group",
                                           elem_id="group-recall")
                failures = gr.Gallery(label="Failures (click a card to load and search it)", columns=3, height=820,
                                      allow_preview=False, object_fit="contain", elem_id="failures",
                                      elem_classes=["cir-gallery", "cir-cards"], visible=False)
                with gr.Accordion("/benchmark answer (JSON)", open=False):
                    benchmark_json = gr.JSON(label="/benchmark answer")
                failure_ids = gr.State([])
                failure_report = gr.State(None)  # the report shown, for its cards

        # -------------------------------------------------------------- wiring
        query_inputs = [reference, caption, top_k, explain, state]
        view_outputs = [summary, results, latency, prompt_captions, prompt_chips, auxiliary_chips, average_map,
                        token_map, relevance_choice, relevance_map]
        view_inputs = [state, token_choice, token_vocabulary]
        search_outputs = [raw_json, state]
        run_search, show_result = bind(on.run_search, engine, startup), bind(on.show_result, engine)
        api_search.click(run_search, [reference, caption, top_k, api_explain, state], search_outputs,
                         api_name="search", preprocess=False, api_description=SEARCH_DOC)
        search_button.click(run_search, query_inputs, search_outputs, api_name="search_ui", api_visibility=HIDDEN,
                            preprocess=False).success(
            show_result, view_inputs, view_outputs, api_name="show_result", api_visibility=HIDDEN)
        caption.submit(run_search, query_inputs, search_outputs, api_name="search_on_enter", api_visibility=HIDDEN,
                       preprocess=False).success(
            show_result, view_inputs, view_outputs, api_name="show_result_on_enter", api_visibility=HIDDEN)
        # preprocess=False: the handlers check the values, with one line for a bad one where gradio's
        # own range and choice checks would log a traceback.
        token_choice.release(bind(on.show_token, engine), [state, token_choice], token_map, api_name="attention_token",
                             api_visibility=HIDDEN, preprocess=False)
        token_vocabulary.input(on.show_tokens, [state, token_vocabulary], [prompt_chips, auxiliary_chips],
                               api_name="prompt_tokens", api_visibility=HIDDEN, preprocess=False)
        relevance_choice.input(bind(on.explain_result, engine), [state, relevance_choice], relevance_map,
                               api_name="relevance", api_visibility=HIDDEN)
        results.select(bind(on.use_result_as_reference, engine), [state], [reference, reference_info, state],
                       api_name="use_result_as_reference", api_visibility=HIDDEN)
        gallery_pick.submit(bind(on.pick_from_gallery, engine), [gallery_pick, state],
                            [reference, reference_info, state], api_name="pick_gallery_image",
                            api_description=PICK_DOC)
        reference.input(on.forget_gallery_reference, [state], [reference_info, state], api_name="new_reference",
                        api_visibility=HIDDEN)
        reference.clear(on.clear_reference, [state], [reference_info, state], api_name="clear_reference",
                        api_visibility=HIDDEN)
        examples_table.click(bind(on.load_example, engine, examples), [examples_table],
                             [reference, reference_info, caption, state], api_name="load_example",
                             api_visibility=HIDDEN)
        compare_button.click(bind(on.run_compare, engine), [reference, caption, top_k, state], [compare_json, state],
                             api_name="compare", preprocess=False, api_description=COMPARE_DOC).success(
            bind(on.show_comparison, engine), [state], [compare_summary, *compare_galleries],
            api_name="show_comparison", api_visibility=HIDDEN)
        failure_views = [failure_count, group_table, failures, failure_ids]
        find_button.click(bind(on.benchmark, engine), [group_filter, keyword], [benchmark_json, failure_report],
                          api_name="benchmark", api_description=BENCHMARK_DOC).success(
            bind(on.show_failures, engine), [failure_report], failure_views, api_name="failures",
            api_visibility=HIDDEN)
        if queries:  # a plain gallery's tab only says there is no benchmark
            failure_tab.select(bind(on.open_failures, engine), [group_filter, keyword, failure_report],
                               [benchmark_json, failure_report, *failure_views], api_name="open_failures",
                               api_visibility=HIDDEN)
        failures.select(None, js=SCROLL_TO_QUERY, api_name="scroll_to_query")
        failures.select(bind(on.load_failure, engine), [failure_ids], [reference, reference_info, caption, state],
                        api_name="load_failure", api_visibility=HIDDEN).success(
            run_search, query_inputs, search_outputs, api_name="search_failure", api_visibility=HIDDEN,
            preprocess=False).success(
            show_result, view_inputs, view_outputs, api_name="show_failure", api_visibility=HIDDEN)
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
