"""The app on the real benchmarks' annotations (stand-in images): `--dataset cirr|fashioniq`,
the /search and /benchmark endpoints, ground truth, failures by group and keyword, bad flags."""
import os
import re

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from gradio_client import Client, handle_file

import app
from cir_core.data.query_groups import CAPTION_KEYWORD_GROUPS, VIEW_ANGLE, keyword_groups
from cir_core.data.registry import open_source
from cir_core.engine import Engine
from standins import SHARED_DATA, needs_real_annotations, write_cirr_val_standin, write_fashioniq_val_standin
from tiny_gallery import serving, write_image_sensitive_checkpoint

pytestmark = needs_real_annotations


def matches_any(caption: str, phrases) -> bool:
    words = [r"\s+".join(phrase.split(" ")) for phrase in phrases]  # "close up" spans any spaces
    return any(re.search(r"\b(?:" + word + r")\b", caption, re.IGNORECASE) for word in words)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return {"cirr": write_cirr_val_standin(root / "cirr"), "fashioniq": write_fashioniq_val_standin(root / "fiq"),
            "model": write_image_sensitive_checkpoint(root / "model"), "cache": root / "cache"}


def engine_for(roots, argv) -> Engine:
    """The engine app.py would build from `argv`."""
    args = app.parse_args(["--model", f"local-dir:{roots['model']}", *argv])
    return Engine.from_uris(args.model, source=app.benchmark_source(args), cache_root=roots["cache"], progress=False)


@pytest.fixture(scope="module")
def cirr_app(roots):
    engine = engine_for(roots, ["--dataset", "cirr", "--data-root", str(roots["cirr"])])
    with serving(engine) as url:
        yield engine, Client(url, verbose=False)


# ---------------------------------------------------------------------- groups
def test_cirr_view_angle_group_is_the_documented_phrases():
    source = open_source("cirr", SHARED_DATA / "cirr", check_images=False)
    view_angle = [t for t in source.queries if VIEW_ANGLE in source.groups(t)]
    assert len(source.queries) == 4181 and len(view_angle) == 441  # the figure the module documents
    assert all(matches_any(t.caption, CAPTION_KEYWORD_GROUPS[VIEW_ANGLE]) for t in view_angle)
    others = [t for t in source.queries if VIEW_ANGLE not in source.groups(t)]
    assert not any(matches_any(t.caption, CAPTION_KEYWORD_GROUPS[VIEW_ANGLE]) for t in others)
    assert source.group_names()[0] == VIEW_ANGLE


def test_keywords_match_whole_words_only():
    assert keyword_groups("show it from the left side") == (VIEW_ANGLE,)
    assert keyword_groups("put it outside") == ("background",)  # "outside" is not "side"
    assert keyword_groups("a close  up of two dogs") == (VIEW_ANGLE, "count")
    assert keyword_groups("a dog facing left, side by side") == ()  # poses and positions, not a camera
    assert keyword_groups("nothing of the sort") == ()


def test_fashioniq_groups_are_categories(roots):
    every = open_source("fashioniq", roots["fashioniq"])
    assert every.group_names()[:3] == ["dress", "shirt", "toptee"]
    assert len({t.pairid for t in every.queries}) == len(every.queries) == 180  # pairids unique across categories
    dress = open_source("fashioniq", roots["fashioniq"], category="dress")
    assert {t.edit for t in dress.queries} == {"dress"} and "shirt" not in dress.group_names()


# ---------------------------------------------------------------------- the app on CIRR
def test_cirr_app_answers_search_and_marks_the_target(cirr_app, roots):
    engine, client = cirr_app
    query = engine.benchmark_queries()[0]
    answer = client.predict(handle_file(engine.gallery_path(query.reference_id)), query.caption, 5, False,
                            api_name="/search")
    assert len(answer["results"]) == 5 and all(r["id"] in engine.gallery_ids for r in answer["results"])
    _, info, caption = client.predict(0, api_name="/load_example")  # its target becomes the ground truth
    assert "benchmark query" in info
    loaded = client.predict(None, caption, 5, False, api_name="/search")
    example = engine.benchmark_queries()  # the example shown first is a view-angle query
    assert loaded["ground_truth"]["id"] in {q.target_id for q in example if VIEW_ANGLE in q.groups}
    direct = engine.search(loaded["reference_id"], loaded["caption"], k=5, ground_truth_id=loaded["ground_truth"]["id"])
    assert loaded["ground_truth"]["rank"] == direct.ground_truth.rank


@pytest.mark.slow  # evaluates the whole CIRR stand-in split
def test_cirr_benchmark_endpoint_lists_view_angle_failures(cirr_app):
    engine, client = cirr_app
    answer = client.predict(VIEW_ANGLE, "", api_name="/benchmark")
    assert answer["split"] == "cirr/val" and answer["queries"] == 4181
    assert list(answer["groups"])[:2] == ["all", VIEW_ANGLE]
    assert answer["groups"][VIEW_ANGLE]["queries"] == 441
    for group in answer["groups"].values():
        assert set(group) == {"queries", "R@1", "R@5"} and 0 <= group["R@1"] <= group["R@5"] <= 100
    failures = answer["failures"]
    assert failures and all(VIEW_ANGLE in f["groups"] and f["target_rank"] > 1 for f in failures)
    assert all(matches_any(f["caption"], CAPTION_KEYWORD_GROUPS[VIEW_ANGLE]) for f in failures)
    expected_misses = round(441 * (1 - answer["groups"][VIEW_ANGLE]["R@1"] / 100))
    assert len(failures) == expected_misses
    worst = failures[0]
    check = engine.search(worst["reference"], worst["caption"], k=3, ground_truth_id=worst["target"])
    assert check.ground_truth.rank == worst["target_rank"] and [h.id for h in check.hits] == worst["top"]
    facing = client.predict("", "facing", api_name="/benchmark")["failures"]
    assert facing and all("facing" in f["caption"].lower() for f in facing)
    with pytest.raises(Exception, match="no such group"):
        client.predict("no such group", "", api_name="/benchmark")


# ---------------------------------------------------------------------- the app on FashionIQ
def test_fashioniq_app_reports_by_category(roots):
    with serving(engine_for(roots, ["--dataset", "fashioniq", "--data-root", str(roots["fashioniq"])])) as url:
        answer = Client(url, verbose=False).predict("shirt", "", api_name="/benchmark")
        assert answer["split"] == "fashioniq/val" and answer["queries"] == 180
        assert [answer["groups"][name]["queries"] for name in ("dress", "shirt", "toptee")] == [60, 60, 60]
        assert answer["failures"] and all("shirt" in f["groups"] for f in answer["failures"])
    with serving(engine_for(roots, ["--dataset", "fashioniq", "--data-root", str(roots["fashioniq"]),
                                    "--category", "dress"])) as url:
        answer = Client(url, verbose=False).predict("", "", api_name="/benchmark")
        assert answer["split"] == "fashioniq-dress/val" and answer["queries"] == 60
        assert "shirt" not in answer["groups"] and answer["groups"]["dress"]["queries"] == 60


# ---------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("flags, message", [
    (["--dataset", "coco"], "unknown --dataset 'coco'"),
    (["--dataset", "cirr"], "needs --data-root"),
    (["--dataset", "cirr", "--data-root", "/no/such/folder"], "is not a folder"),
    (["--dataset", "cirr", "--data-root", "{cirr}", "--split", "dev"], "unknown cirr split 'dev'"),
    (["--dataset", "fashioniq", "--data-root", "{fashioniq}", "--category", "hats"], "unknown FashionIQ category"),
    (["--dataset", "cirr", "--data-root", "{cirr}", "--category", "dress"], "applies to FashionIQ only"),
    (["--dataset", "fashioniq", "--data-root", "{cirr}"], "cap.dress.val.json"),
    (["--gallery", "{cirr}", "--dataset", "cirr"], "not both"),
])
def test_bad_benchmark_flags_are_one_line_errors(roots, capsys, flags, message):
    flags = [flag.format(**roots) for flag in flags]
    assert app.main(["--model", f"local-dir:{roots['model']}", *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cannot start the app:") and message in error and "\n" not in error


def test_bad_server_port_is_refused_before_the_model_loads(roots, capsys, monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "abc")
    assert app.main(["--model", "local-dir:/no/such/model"]) == 2
    assert "GRADIO_SERVER_PORT must be a port number" in capsys.readouterr().err


def test_the_failure_page_points_at_the_keyword_lists_instead_of_copying_them():
    from pathlib import Path

    import cir_core.data.query_groups as query_groups

    doc = (Path(__file__).parent.parent / "docs" / "failure-inspection.md").read_text()
    assert "CAPTION_KEYWORD_GROUPS" in doc and hasattr(query_groups, "CAPTION_KEYWORD_GROUPS")
    assert not any(", ".join(words) in doc for words in CAPTION_KEYWORD_GROUPS.values())


def test_the_missing_default_model_hint_is_only_for_the_model(capsys, monkeypatch, tmp_path):
    import dataclasses

    missing = f"local-dir:{tmp_path / 'no-model'}"
    monkeypatch.delenv("CIR_MODEL", raising=False)
    monkeypatch.setitem(app.SHIPPED, app.DEFAULT_DATASET,
                        dataclasses.replace(app.SHIPPED[app.DEFAULT_DATASET], model=missing))
    assert app.main(["--dataset", "coco"]) == 2
    assert "default model is missing" not in capsys.readouterr().err  # a bad flag, not a missing model
    assert app.main(["--gallery", str(tmp_path)]) == 2
    assert "default model is missing" in capsys.readouterr().err
    assert app.main(["--model", missing, "--gallery", str(tmp_path)]) == 2
    assert "default model is missing" not in capsys.readouterr().err  # a model the user named
