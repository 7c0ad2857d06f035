"""The app launched in-process and called through gradio_client, as an API user would."""
import importlib.util
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tiny_gallery import png_with_forged_size

CAPTION = "make the blue square small"


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("upload") / "query.png"
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_search_endpoint_returns_ranked_ids_and_scores(served, client, upload):
    engine, _ = served
    answer = client.predict(handle_file(str(upload)), CAPTION, 5, False, api_name="/search")
    results = answer["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert all(r["id"] in engine.gallery_ids for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    direct = engine.search(str(upload), CAPTION, k=5)
    assert [r["id"] for r in results] == [h.id for h in direct.hits]
    assert answer["reference_id"] is None and answer["timings_ms"]["total"] > 0


def test_search_with_explanations_over_the_api(served, client, upload):
    engine, _ = served
    answer = client.predict(handle_file(str(upload)), CAPTION, 3, True, api_name="/search")
    assert len(answer["results"]) == 3 and answer["timings_ms"]["explain"] > 0
    explanation = answer["explanation"]
    direct = engine.search(str(upload), CAPTION, k=3, explain=True).explanation  # the engine, not the app
    q = engine.model_summary().prompt_tokens
    tokens = explanation["tokens"]
    assert [[m["token"] for m in row] for row in tokens["prompt"]] == [[m.token for m in row]
                                                                         for row in direct.prompt_tokens]
    assert len(tokens["auxiliary"]) == q and all(len(row) == 3 for row in tokens["auxiliary"])
    assert all(-1 <= m["similarity"] <= 1 for row in tokens["prompt"] for m in row)
    attention = explanation["attention"]
    assert np.array(attention["per_token"]).shape == (q, 4, 4) and np.array(attention["average"]).shape == (4, 4)
    assert np.allclose(attention["average"], direct.attention.average, atol=1e-3)
    assert np.allclose(attention["patch_share"], direct.attention.patch_share, atol=1e-3)
    relevance, = explanation["relevance"]  # the first result's
    assert relevance["id"] == answer["results"][0]["id"] == direct.relevance_id
    assert relevance["score"] == pytest.approx(direct.relevance.score, abs=1e-3)
    assert relevance["score"] == pytest.approx(answer["results"][0]["score"], abs=3e-2)  # a bf16 gallery
    assert np.allclose(relevance["grid"], direct.relevance.grid, atol=1e-3)
    grid = np.array(relevance["grid"])
    assert grid.shape == (4, 4) and grid.min() >= 0 and grid.max() <= 1
    captions = explanation["captions"]
    assert captions["kind"] and (captions["composed_query"] is None) == bool(captions["note"])
    for match in captions["composed_query"] or []:
        assert set(match) == {"text", "image_id", "similarity"} and match["text"] != CAPTION


def test_search_explains_only_when_asked(client, upload):
    answer = client.predict(handle_file(str(upload)), CAPTION, 3, api_name="/search")  # the default
    assert answer["explanation"] is None and answer["timings_ms"]["explain"] == 0


def test_the_api_page_is_short_and_names_every_input_and_output(served):
    engine, url = served
    page = httpx.get(f"{url}gradio_api/info", timeout=30).text
    assert len(page) < 15_000
    assert not any(f'"{image_id}"' in page for image_id in engine.gallery_ids)  # no list of the gallery
    info = json.loads(page)
    assert set(info["named_endpoints"]) == {"/search", "/compare", "/pick_gallery_image", "/benchmark"}
    search = {p["parameter_name"]: p for p in info["named_endpoints"]["/search"]["parameters"]}
    assert search["with_explanations"]["parameter_default"] is False
    # The page itself explains every search by default: only the API's default is off.
    components = httpx.get(f"{url}config", timeout=30).json()["components"]
    explain, = [c for c in components if c.get("props", {}).get("elem_id") == "explain"]
    assert explain["props"]["value"] is True
    pick, = info["named_endpoints"]["/pick_gallery_image"]["parameters"]
    assert pick["component"] == "Textbox" and pick["parameter_name"] == "image_id"
    everything = httpx.get(f"{url}gradio_api/info", params={"all_endpoints": "true"}, timeout=30).json()
    labels = [item["label"] for endpoint in everything["named_endpoints"].values()
              for item in endpoint["parameters"] + endpoint["returns"]]
    assert len(everything["named_endpoints"]) > 10 and labels
    assert not [label for label in labels if label.startswith(("value_", "parameter_"))]


def test_compare_answers_json_rankings(served, client, upload):
    engine, _ = served
    answer = client.predict(handle_file(str(upload)), CAPTION, 4, api_name="/compare")
    direct = engine.compare(str(upload), CAPTION, k=4)
    assert [r["name"] for r in answer["rankings"]] == [r.name for r in direct.rankings]
    for shown, ranking in zip(answer["rankings"], direct.rankings):
        assert [h["id"] for h in shown["results"]] == [h.id for h in ranking.hits]
        assert [h["score"] for h in shown["results"]] == pytest.approx([h.score for h in ranking.hits], abs=1e-5)
        assert shown["description"] == ranking.description and shown["ground_truth"] is None


def test_a_picked_gallery_image_is_the_reference_of_the_next_search(served, upload):
    engine, url = served
    client = Client(url, verbose=False)
    image_id = engine.gallery_ids[5]
    _, info = client.predict(f"  {image_id} ", api_name="/pick_gallery_image")
    assert image_id in info
    answer = client.predict(None, CAPTION, 4, False, api_name="/search")
    assert answer["reference_id"] == image_id
    assert [r["id"] for r in answer["results"]] == [h.id for h in engine.search(image_id, CAPTION, k=4).hits]
    with pytest.raises(Exception, match="at most 256 characters"):
        client.predict("x" * 10_000, api_name="/pick_gallery_image")


BAD_VALUES = [
    ("/benchmark", ("no such group", ""), "unknown group 'no such group'; this benchmark has view angle"),
    ("/benchmark", (3, ""), "group and keyword must be text"),
    ("/attention_token", (99,), "the prompt token must be between 1 and 4, got 99"),
    ("/attention_token", ("abc",), "the prompt token must be a whole number"),
    ("/prompt_tokens", ("every word",), "the vocabulary must be one of"),
    ("/pick_gallery_image", ("no-such-id",), "'no-such-id' is not an image of the gallery"),
    ("/search", ("{upload}", CAPTION, "x", False), "k must be a whole number"),
]


@pytest.mark.parametrize("api_name, args, message", BAD_VALUES)
def test_a_bad_value_is_one_line_in_the_log_not_a_traceback(client, upload, caplog, capfd, api_name, args, message):
    args = [handle_file(str(upload)) if arg == "{upload}" else arg for arg in args]
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="demo.requests"):
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name=api_name)
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out
    logged = [record.getMessage() for record in caplog.records if record.name == "demo.requests"]
    assert len(logged) == 1 and "refused" in logged[0] and "\n" not in logged[0]


def test_bad_input_is_a_visible_error_and_the_app_keeps_serving(client, upload, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"definitely not a png")
    with pytest.raises(Exception, match="not an image file"):
        client.predict(handle_file(str(broken)), CAPTION, 3, False, api_name="/search")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_forged_size(20000, 20000))
    with pytest.raises(Exception, match="too large"):
        client.predict(handle_file(str(bomb)), CAPTION, 3, False, api_name="/search")
    with pytest.raises(Exception, match="caption is empty"):
        client.predict(handle_file(str(upload)), "   ", 3, False, api_name="/search")
    answer = client.predict(handle_file(str(upload)), CAPTION, 3, False, api_name="/search")
    assert len(answer["results"]) == 3


@pytest.mark.parametrize("api_name, args, message", [
    ("/search", ("{upload}", CAPTION, "inf", False), "k must be a whole number"),
    ("/search", ("{upload}", CAPTION, None, False), "k must be a whole number"),
    ("/search", ("{upload}", CAPTION, [3], False), "k must be a whole number"),
    ("/search", ("{upload}", CAPTION, 1.5, False), "k must be a whole number"),
    ("/search", ("not a payload", CAPTION, 3, False), "valid dictionary or instance of ImageData"),
    ("/search", ("{upload}", "\u200b\u200b", 3, False), "caption is empty"),
    ("/load_example", (-1,), "between 0 and"),
    ("/load_example", (10_000,), "between 0 and"),
    ("/load_example", (1.5,), "whole number"),
    ("/pick_gallery_image", ("no-such-id",), "'no-such-id' is not an image of the gallery"),
])
def test_bad_api_arguments_get_a_message_not_an_internal_error(served, client, upload, api_name, args, message):
    args = [handle_file(str(upload)) if arg == "{upload}" else arg for arg in args]
    with pytest.raises(Exception, match=message) as caught:
        client.predict(*args, api_name=api_name)
    assert "internal error" not in str(caught.value) and len(str(caught.value)) < 300


def test_out_of_range_attention_token_is_a_message(served, client, upload):
    client.predict(handle_file(str(upload)), CAPTION, 3, True, api_name="/search")
    for token, message in ((99, "prompt token must be between 1 and"), (1.5, "prompt token must be a whole number")):
        with pytest.raises(Exception, match=message) as caught:
            client.predict(token, api_name="/attention_token")
        assert "internal error" not in str(caught.value)


def test_uploads_over_the_size_limit_are_refused(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + os.urandom(11 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)maximum file size|too large|413"):
        client.predict(handle_file(str(big)), CAPTION, 3, False, api_name="/search")


def test_every_event_has_an_api_name(served, client):
    info = client.view_api(print_info=False, return_format="dict")
    assert {"/search", "/compare", "/benchmark"} <= set(info["named_endpoints"])
    app_config = client.config
    dependencies = app_config["dependencies"]
    assert all(d.get("api_name") for d in dependencies), [d.get("api_name") for d in dependencies]


def test_eight_clients_five_queries_each_concurrently(served, upload):
    engine, url = served
    captions = ["make the red circle large", "remove the green triangle", "add a blue square at the center",
                "mirror the scene", "rotate the scene clockwise"]

    def one_user(user: int) -> list[list[str]]:
        user_client = Client(url, verbose=False)
        return [[r["id"] for r in user_client.predict(handle_file(str(upload)), caption, 4, False,
                                                        api_name="/search")["results"]]
                for caption in captions]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one_user, range(8)))
    expected = [[h.id for h in engine.search(str(upload), caption, k=4).hits] for caption in captions]
    assert answers == [expected] * 8


def load_app_module():
    spec = importlib.util.spec_from_file_location("app_under_test", Path(__file__).parent.parent / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_reports_a_missing_default_model_clearly(tmp_path, monkeypatch, capsys):
    from tiny_gallery import write_tiny_shapes

    app = load_app_module()
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here
    write_tiny_shapes(tmp_path / "assets" / "shapes")  # the shipped gallery, small
    monkeypatch.delenv("CIR_MODEL", raising=False)
    monkeypatch.setenv("CIR_CACHE", str(tmp_path / "cache"))
    assert app.main(["--dataset", "shapes"]) == 2
    message = capsys.readouterr().err
    assert "checkpoints/shapes-mini does not exist" in message and "default model is missing" in message
    assert not (tmp_path / "cache" / "indexes").exists()  # failed before indexing a gallery


def test_without_flags_the_app_serves_scenes3d_with_its_own_model(tmp_path, monkeypatch, capsys):
    app = load_app_module()
    monkeypatch.chdir(tmp_path)  # neither the scenes3d test split nor its model here
    monkeypatch.delenv("CIR_MODEL", raising=False)
    monkeypatch.delenv("CIR_DATASET", raising=False)
    monkeypatch.setenv("CIR_CACHE", str(tmp_path / "cache"))
    assert app.main([]) == 2
    message = capsys.readouterr().err.strip()
    assert "scenes3d benchmark is in none of assets/scenes3d, data/scenes3d" in message
    assert "cir data scenes3d --out assets/scenes3d --seed 4242 --train 0 --val 0" in message and "\n" not in message
    assert app.model_uri(app.parse_args([])) == "local-dir:checkpoints/scenes3d-mini"
    assert app.model_uri(app.parse_args(["--dataset", "shapes"])) == "local-dir:checkpoints/shapes-mini"
    assert app.model_uri(app.parse_args(["--dataset", "cirr"])) == "local-dir:checkpoints/scenes3d-mini"
    assert app.model_uri(app.parse_args(["--dataset", "shapes", "--model", "local-dir:m"])) == "local-dir:m"
    seen = {}

    def stop_after_reading(uri, **kwargs):
        seen.update(kwargs, uri=uri)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(app.Engine, "from_uris", stop_after_reading)
    monkeypatch.setattr(app, "open_source", lambda dataset, root, **kwargs: SimpleNamespace(dataset=dataset))
    (tmp_path / "data" / "scenes3d").mkdir(parents=True)
    (tmp_path / "data" / "scenes3d" / "info.json").write_text("{}")
    assert app.main([]) == 2
    assert seen["uri"] == "local-dir:checkpoints/scenes3d-mini"
    assert seen["index_seed"] == Path("checkpoints/scenes3d-mini/gallery_index_seed.npz")


@pytest.mark.parametrize("name, value, message", [
    ("CIR_PREPARE_FAILURES", "yes", "CIR_PREPARE_FAILURES must be 0 or 1, got 'yes'"),
    ("CIR_QUERY_PRECISION", "int4", "CIR_QUERY_PRECISION must be auto, fp32, bf16 or int8, got 'int4'"),
    ("CIR_GALLERY_PRECISION", "fp16", "CIR_GALLERY_PRECISION must be auto, fp32, bf16 or int8, got 'fp16'"),
])
def test_app_rejects_bad_settings_before_loading_anything(monkeypatch, capsys, name, value, message):
    app = load_app_module()
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(app.Engine, "from_uris", lambda *a, **k: pytest.fail("must fail before loading anything"))
    assert app.main([]) == 2
    assert message in capsys.readouterr().err


def test_app_passes_the_query_precision_to_the_engine(monkeypatch):
    app = load_app_module()
    monkeypatch.setenv("CIR_QUERY_PRECISION", "int8")
    monkeypatch.setenv("CIR_GALLERY_PRECISION", "bf16")
    seen = {}

    def refuse_after_reading(*args, **kwargs):
        seen.update(kwargs)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(app.Engine, "from_uris", refuse_after_reading)
    assert app.main([]) == 2 and seen["query_precision"] == "int8" and seen["gallery_precision"] == "bf16"
    monkeypatch.delenv("CIR_GALLERY_PRECISION")
    assert app.main([]) == 2 and seen["gallery_precision"] == "auto"


def test_app_refuses_cuda_without_cuda_before_loading_the_model(monkeypatch, capsys, tmp_path):
    import torch

    app = load_app_module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("cir_core.engine.load_model", lambda *a, **k: pytest.fail("must refuse before loading"))
    assert app.main(["--index", str(tmp_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cannot start the app:") and "no CUDA device" in err and "\n" not in err
    monkeypatch.setenv("CIR_DEVICE", "cuda")
    assert app.parse_args([]).device == "cuda" and app.parse_args(["--device", "cpu"]).device == "cpu"
    monkeypatch.setenv("CIR_DEVICE", "gpu")
    assert app.main(["--index", str(tmp_path)]) == 2
    assert "device must be one of auto, cpu, cuda" in capsys.readouterr().err


def test_app_reads_model_index_and_gallery_from_env_and_flags(monkeypatch):
    app = load_app_module()
    monkeypatch.setenv("CIR_MODEL", "hf-hub:org/model")
    monkeypatch.setenv("CIR_INDEX", "/some/index")
    args = app.parse_args([])
    assert (args.model, args.index, args.gallery) == ("hf-hub:org/model", "/some/index", None)
    args = app.parse_args(["--model", "local-dir:elsewhere", "--gallery", "pics"])
    assert (args.model, args.index, args.gallery) == ("local-dir:elsewhere", "/some/index", "pics")


def test_curated_examples_are_used_only_when_they_match_the_benchmark(served, tmp_path):
    from demo.ui import choose_examples, load_curated_examples

    engine, _ = served
    queries = engine.benchmark_queries()
    wanted = queries[3]
    entries = [{"pairid": wanted.pairid, "reference": wanted.reference_id, "target": wanted.target_id,
                "caption": wanted.caption},
               {"pairid": queries[4].pairid, "reference": "another-image", "target": queries[4].target_id,
                "caption": queries[4].caption}]
    path = tmp_path / "examples.json"
    path.write_text(json.dumps({"queries": entries}))
    groups = engine.group_names()
    assert choose_examples(queries, load_curated_examples(path), groups) == [wanted]
    fallback = choose_examples(queries, [entries[1]], groups)  # nothing matches: a few per group, view angle first
    assert fallback and "view angle" in fallback[0].groups
    assert {g for q in fallback for g in q.groups} == set(groups)  # every group has an example
    assert len({q.pairid for q in fallback}) == len(fallback)
    shipped = load_curated_examples(Path(__file__).parent.parent / "assets" / "examples" / "shapes.json")
    assert len(shipped) >= 8 and {"mirror", "rotate"} <= {entry["edit"] for entry in shipped}


def test_relevance_of_any_result_uses_the_callers_own_last_search(served, upload):
    _, url = served
    user, stranger = Client(url, verbose=False), Client(url, verbose=False)
    answer = user.predict(handle_file(str(upload)), CAPTION, 3, False, api_name="/search")
    overlay = user.predict(answer["results"][1]["id"], api_name="/relevance")
    with Image.open(overlay) as image:
        assert image.width > 200 and image.height > 200
    with pytest.raises(Exception, match="search first"):  # no search in this client's own state
        stranger.predict(answer["results"][1]["id"], api_name="/relevance")


def test_rendering_marks_the_target_and_escapes_tokens():
    from cir_core.engine import GroundTruth, Hit
    from cir_core.explain import TokenMatch
    from demo import render

    hits = [Hit(rank=1, id="a", score=0.9, path="a.png", label=""), Hit(rank=2, id="b", score=0.8, path="b.png",
                                                                       label="")]
    pictures = {"a": Image.new("RGB", (2, 2)), "b": Image.new("RGB", (3, 3))}
    items = render.gallery_items(hits, pictures.get, ground_truth_id="b")
    assert [caption for _, caption in items] == ["#1 · 0.900 · a", f"{render.TARGET_MARK} #2 · 0.800 · b"]
    assert [picture for picture, _ in items] == [pictures["a"], pictures["b"]]  # pixels from the engine, no paths
    line = render.ground_truth_line(GroundTruth(id="z", rank=40, score=0.5, in_top_k=False))
    assert "rank **40**" in line and "outside the results shown" in line
    chips = render.token_chips([[TokenMatch("<b>", 0.2), TokenMatch("red", 0.1)]], "prompt", "cir-prompt")
    assert "&lt;b&gt;" in chips and "<b>" not in chips and chips.count('class="cir-chip"') == 2
    assert "rgba(255, 140, 0, 1.00)" in chips and "rgba(255, 140, 0, 0.50)" in chips  # shaded relative to the best


def test_a_busy_port_is_one_line_before_anything_loads(monkeypatch, capsys):
    import socket

    app = load_app_module()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("GRADIO_SERVER_PORT", str(taken.getsockname()[1]))
        monkeypatch.setattr(app.Engine, "from_uris", lambda *a, **k: pytest.fail("must refuse before loading"))
        assert app.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cannot start the app: port ") and "is in use" in err and "GRADIO_SERVER_PORT" in err
    assert "\n" not in err


def test_the_terminal_says_where_the_app_is(tiny_checkpoint, tmp_path, capsys):
    from tiny_gallery import serving, tiny_engine, write_tiny_shapes

    engine = tiny_engine(tiny_checkpoint, write_tiny_shapes(tmp_path / "shapes"), tmp_path / "cache")
    with serving(engine) as url:
        assert f"SPRC app ready at {url}" in capsys.readouterr().out
