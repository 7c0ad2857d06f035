"""What a running app can be made to read or serve: only decoded gallery images, never another file
of the machine, whatever a gallery folder links to, an annotation names or an index lists; and
how much one request may carry."""
import base64
import hashlib
import importlib.util
import io
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from cir_core.data.shapes import read_shapes_split
from cir_core.engine import Engine, QueryError
from cir_core.index import GalleryIndex, GalleryIndexError
from cir_core.index_build import items_from_images
from cir_core.safe_paths import PathOutsideRootError, outside_root
from tiny_gallery import serving, write_image_sensitive_checkpoint, write_tiny_shapes

SECRET = "TOP-SECRET-7f3a"
CAPTION = "make the blue square small"


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def write_secrets(folder: Path) -> Path:
    """A folder an app must never serve from: a text file, a dotfile and an image."""
    folder.mkdir(parents=True)
    (folder / "secret.txt").write_text(SECRET)
    (folder / ".hidden").write_text(SECRET)
    write_image(folder / "photo.png", seed=99)
    return folder


def load_app_module():
    spec = importlib.util.spec_from_file_location("app_under_test", Path(__file__).parent.parent / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_error(capsys, monkeypatch, argv: list[str]) -> str:
    """The one line app.py prints when it refuses to start with `argv` (fails if it would serve)."""
    import demo

    def refuse_to_serve(*args, **kwargs):
        raise AssertionError("the app started")

    monkeypatch.setattr(demo, "launch", refuse_to_serve)
    app = load_app_module()
    assert app.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cannot start the app:") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_image_sensitive_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


# ------------------------------------------------------------------ the one check
def test_outside_root_refuses_absolute_dotdot_and_links_out(tmp_path):
    root = (tmp_path / "root").resolve()
    (root / "sub").mkdir(parents=True)
    secrets = write_secrets(tmp_path / "secrets")
    (root / "out.png").symlink_to(secrets / "photo.png")
    (root / "in.png").symlink_to(root / "sub")
    (root / "outdir").symlink_to(secrets)
    assert outside_root(root, "sub/a.png") is None and outside_root(root, "./sub/a.png") is None
    assert outside_root(root, "in.png") is None  # a link that stays inside
    assert outside_root(root, root / "sub" / "a.png", allow_absolute=True) is None
    assert outside_root(root, "/etc/passwd") == "is an absolute path"
    assert outside_root(root, root / "sub" / "a.png") == "is an absolute path"
    assert outside_root(root, "sub/../sub/a.png") == "has a '..' part"
    assert outside_root(root, "out.png").startswith(f"leads outside {root}")
    assert outside_root(root, "outdir/secret.txt").startswith(f"leads outside {root}")
    assert outside_root(root, "/etc/passwd", allow_absolute=True).startswith("leads outside")
    assert outside_root(root, "a\x00b") == "is not a usable file name"


# ------------------------------------------------------------------ gallery folders
def test_gallery_folder_leaves_out_links_that_lead_outside_it(tmp_path, caplog):
    gallery = tmp_path / "gallery"
    secrets = write_secrets(tmp_path / "secrets")
    for name in ("a.png", "sub/b.png"):
        write_image(gallery / name, seed=len(name))
    (gallery / "link.png").symlink_to(secrets / "photo.png")
    (gallery / "notes.txt").symlink_to(secrets / "secret.txt")
    (gallery / "linked").symlink_to(secrets, target_is_directory=True)
    (gallery / "sub" / "same.png").symlink_to(gallery / "a.png")  # inside: kept
    with caplog.at_level(logging.WARNING, logger="cir_core.index_build"):
        items = items_from_images(gallery)
    assert [item.id for item in items] == ["a.png", "sub/b.png", "sub/same.png"]
    assert all(Path(item.path).is_relative_to(gallery.resolve()) for item in items)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "left out 2 entries" in lines[0] and "e.g. link.png" in lines[0]


def test_gallery_folder_of_links_only_is_an_error(tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "link.png").symlink_to(write_secrets(tmp_path / "secrets") / "photo.png")
    with pytest.raises(ValueError, match="no files to index inside it \\(1 lead outside it through links\\)"):
        items_from_images(gallery)


# ------------------------------------------------------------------ dataset annotations
def write_cirr(root: Path, relpaths: dict[str, str]) -> Path:
    """A CIRR val folder with one query over the images a, b, c at `relpaths` (images written when inside)."""
    record = {"pairid": 7, "reference": "a", "target_hard": "b", "target_soft": {"b": 1.0},
              "caption": "make it red", "img_set": {"id": 0, "members": ["a", "b", "c"]}}
    for kind, data in (("captions", [record]), ("image_splits", relpaths)):
        path = root / "cirr" / kind / f"{'cap' if kind == 'captions' else 'split'}.rc2.val.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    for seed, relpath in enumerate(relpaths.values()):
        if not relpath.startswith("/") and ".." not in relpath and not (root / relpath).exists():
            write_image(root / relpath, seed)
    return root


def write_fashioniq(root: Path, reference: str) -> Path:
    records = [{"candidate": reference, "target": "b", "captions": ["is red", "has sleeves"]}]
    for kind, data in (("captions", records), ("image_splits", ["a", "b"])):
        path = root / kind / f"{'cap' if kind == 'captions' else 'split'}.dress.val.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    for seed, name in enumerate(("a", "b")):
        write_image(root / "images" / f"{name}.png", seed)
    return root


def cirr_with_absolute_path(root: Path, secrets: Path) -> tuple[Path, str]:
    return write_cirr(root, {"a": "./dev/a.png", "b": str(secrets / "photo.png"), "c": "./dev/c.png"}), "'b'"


def cirr_with_dotdot(root: Path, secrets: Path) -> tuple[Path, str]:
    relpath = f"../{secrets.name}/photo.png"
    return write_cirr(root, {"a": "./dev/a.png", "b": "./dev/b.png", "c": relpath}), relpath


def cirr_with_link_out(root: Path, secrets: Path) -> tuple[Path, str]:
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "c.png").symlink_to(secrets / "photo.png")
    return write_cirr(root, {"a": "./dev/a.png", "b": "./dev/b.png", "c": "./dev/c.png"}), "'./dev/c.png'"


def fashioniq_with_dotdot(root: Path, secrets: Path) -> tuple[Path, str]:
    return write_fashioniq(root, f"../../{secrets.name}/photo"), "photo"


def fashioniq_with_absolute_id(root: Path, secrets: Path) -> tuple[Path, str]:
    return write_fashioniq(root, str(secrets / "photo")), "is an absolute path"


@pytest.mark.parametrize("dataset, writer", [
    ("cirr", cirr_with_absolute_path), ("cirr", cirr_with_dotdot), ("cirr", cirr_with_link_out),
    ("fashioniq", fashioniq_with_dotdot), ("fashioniq", fashioniq_with_absolute_id),
])
def test_app_refuses_annotations_naming_files_outside_the_data_root(tmp_path, capsys, monkeypatch, checkpoint, dataset,
                                                                     writer):
    secrets = write_secrets(tmp_path / "secrets")
    root, entry = writer(tmp_path / "data", secrets)
    err = start_error(capsys, monkeypatch, ["--model", f"local-dir:{checkpoint}", "--dataset", dataset,
                                            "--data-root", str(root),
                                            *(["--category", "dress"] if dataset == "fashioniq" else [])])
    assert entry in err and ("absolute path" in err or "'..' part" in err or "leads outside" in err), err


def test_shapes_gallery_ids_must_name_files_inside_the_folder(tmp_path, capsys, monkeypatch, checkpoint):
    shapes = write_tiny_shapes(tmp_path / "shapes")
    gallery_file = shapes / "gallery_test.json"
    gallery_file.write_text(json.dumps(json.loads(gallery_file.read_text()) + ["../../secrets/photo"]))
    with pytest.raises(PathOutsideRootError, match="'../../secrets/photo' names a file that has a '..' part"):
        read_shapes_split(shapes, "test")
    err = start_error(capsys, monkeypatch, ["--model", f"local-dir:{checkpoint}", "--dataset", "shapes",
                                            "--data-root", str(shapes)])
    assert "../../secrets/photo" in err


def test_sound_annotations_still_open(tmp_path):
    from cir_core.data.registry import open_source

    root = write_cirr(tmp_path / "cirr", {"a": "./dev/a.png", "b": "./dev/b.png", "c": "./dev/c.png"})
    (root / "dev" / "b.png").unlink()
    (root / "dev" / "b.png").symlink_to(root / "dev" / "a.png")  # a link inside the data root is fine
    assert open_source("cirr", root).split.gallery == ["a", "b", "c"]
    fashioniq = write_fashioniq(tmp_path / "fiq", "a")
    assert open_source("fashioniq", fashioniq, category="dress").split.gallery == ["a", "b"]


# ------------------------------------------------------------------ prebuilt indexes
@pytest.fixture(scope="module")
def built_index(tmp_path_factory, checkpoint):
    """(gallery folder, index folder) of three images, built like `cir build-index --images`."""
    from cir_core.checkpoints import load_model

    root = tmp_path_factory.mktemp("built")
    gallery = root / "gallery"
    for seed in range(3):
        write_image(gallery / f"img{seed}.png", seed)
    GalleryIndex.build(load_model(f"local-dir:{checkpoint}"), items_from_images(gallery), root / "index",
                       progress=False)
    return gallery, root / "index"


def tampered_copy(index: Path, out: Path, path: str | None = None, root=...) -> Path:
    """A copy of `index` whose first image path is `path` and whose gallery_root is `root` (None: removed),
    checksums recomputed so that only the path check can tell."""
    import shutil

    shutil.copytree(index, out)
    metadata = out / "metadata.jsonl"
    lines = [json.loads(line) for line in metadata.read_text().splitlines()]
    if path is not None:
        lines[0]["path"] = path
    metadata.write_text("".join(json.dumps(line) + "\n" for line in lines))
    info = json.loads((out / "info.json").read_text())
    data = metadata.read_bytes()
    info["files"]["metadata.jsonl"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if root is None:
        info.pop("gallery_root")
    elif root is not ...:
        info["gallery_root"] = root
    (out / "info.json").write_text(json.dumps(info))
    return out


def test_an_index_records_its_gallery_folder_and_loads(built_index):
    gallery, index = built_index
    assert json.loads((index / "info.json").read_text())["gallery_root"] == str(gallery.resolve())
    legacy = tampered_copy(index, index.parent / "legacy", root=None)  # written before folders were recorded
    assert GalleryIndex.load(legacy).paths == GalleryIndex.load(index).paths


@pytest.mark.parametrize("case, root, message", [
    ("recorded folder", ..., "which leads outside"),
    ("no recorded folder", None, "records no gallery folder and its images share none"),
    ("relative path", ..., "which leads outside"),  # opened from the working folder, outside the gallery
    ("dotdot", ..., "has a '..' part"),
])
def test_app_refuses_an_index_naming_a_file_outside_its_gallery(built_index, tmp_path, capsys, monkeypatch, checkpoint,
                                                                case, root, message):
    gallery, index = built_index
    secret = write_secrets(tmp_path / "secrets") / "secret.txt"
    path = {"relative path": "secret.txt", "dotdot": f"{gallery.resolve()}/../secrets/secret.txt",
            "no recorded folder": "/etc/passwd"}.get(case, str(secret))
    tampered = tampered_copy(index, tmp_path / "index", path, root)
    with pytest.raises(GalleryIndexError, match=message):
        GalleryIndex.load(tampered)
    err = start_error(capsys, monkeypatch, ["--model", f"local-dir:{checkpoint}", "--index", str(tampered)])
    assert message in err and "'img0.png'" in err


def test_an_index_whose_recorded_folder_is_the_root_still_serves_only_images(built_index, tmp_path, checkpoint):
    """Whoever writes info.json can record "/" as the gallery folder; the app then shows decoded images
    of the gallery and nothing else."""
    _, index = built_index
    secret = write_secrets(tmp_path / "secrets") / "secret.txt"
    tampered = tampered_copy(index, tmp_path / "index", str(secret), root="/")
    engine = Engine.from_uris(f"local-dir:{checkpoint}", index_dir=tampered, cache_root=tmp_path / "cache",
                              progress=False)
    with pytest.raises(QueryError, match="not an image file"):
        engine.gallery_image("img0.png")
    assert engine.gallery_image("img1.png", max_side=8).size == (8, 8)


def test_a_result_whose_file_is_gone_shows_as_a_grey_square(tmp_path, checkpoint):
    from demo.render import missing_picture
    from demo.handlers import RESULT_SIDE, ViewState
    from demo.ui import build_ui

    for seed in range(4):
        write_image(tmp_path / "gallery" / f"img{seed}.png", seed)
    engine = Engine.from_uris(f"local-dir:{checkpoint}", gallery_data=tmp_path / "gallery",
                              cache_root=tmp_path / "cache", progress=False)
    show_result = next(f.fn for f in build_ui(engine).fns.values() if f.api_name == "show_result")
    result = engine.search("img0.png", CAPTION, k=3)
    os.remove(engine.gallery_path(result.hits[0].id))
    pictures = [picture for picture, _ in show_result(ViewState(result=result), 1, "all words")[1]]
    assert pictures[0].tobytes() == missing_picture(RESULT_SIDE).tobytes()
    assert [picture.size for picture in pictures[1:]] == [(24, 24), (24, 24)]


# ------------------------------------------------------------------ the running app
@pytest.fixture(scope="module")
def linked_gallery_app(tmp_path_factory, checkpoint):
    """(engine, url, secrets folder, gallery folder): an app over a gallery folder holding links to a
    folder of secrets, launched in-process."""
    root = tmp_path_factory.mktemp("linked")
    secrets = write_secrets(root / "secrets")
    gallery = root / "gallery"
    for seed in range(6):
        write_image(gallery / f"img{seed}.png", seed)
    (gallery / "link.png").symlink_to(secrets / "photo.png")
    (gallery / "secret.png").symlink_to(secrets / "secret.txt")
    engine = Engine.from_uris(f"local-dir:{checkpoint}", gallery_data=gallery, cache_root=root / "cache",
                              progress=False)
    with serving(engine) as url:
        yield engine, url, secrets, gallery


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("upload") / "query.png", seed=5, size=40)


def test_links_out_of_the_gallery_are_not_indexed(linked_gallery_app):
    engine = linked_gallery_app[0]
    assert engine.gallery_ids == [f"img{seed}.png" for seed in range(6)]


@pytest.mark.parametrize("route", ["gradio_api/file={path}", "file={path}", "gradio_api/file/{path}",
                                   "gradio_api/file={cache}/../..{path}", "gradio_api/file={cache}/%2e%2e/..{path}"])
@pytest.mark.parametrize("target", ["secrets/secret.txt", "secrets/.hidden", "secrets/photo.png",
                                    "gallery/link.png", "gallery/secret.png", "gallery/img0.png", "/etc/passwd"])
def test_no_file_route_serves_anything_outside_gradios_cache(linked_gallery_app, route, target):
    _, url, secrets, gallery = linked_gallery_app
    path = target if target.startswith("/") else str(secrets.parent / target)
    cache = os.environ.get("GRADIO_TEMP_DIR", "/tmp/gradio")
    response = httpx.get(url + route.format(path=path, cache=cache), timeout=30)
    assert response.status_code != 200 and SECRET not in response.text
    assert b"root:" not in response.content and b"PNG" not in response.content[:8]


def rest_call(url: str, api_name: str, data: list) -> tuple[str, str]:
    """(event, data) of one call through gradio's REST API (POST, then read the event stream)."""
    posted = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=60)
    if posted.status_code != 200:
        return f"http {posted.status_code}", posted.text
    stream = httpx.get(f"{url}gradio_api/call/{api_name}/{posted.json()['event_id']}", timeout=120).text
    events = [line.removeprefix("event: ") for line in stream.splitlines() if line.startswith("event: ")]
    payloads = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], payloads[-1]


@pytest.mark.parametrize("target", ["secrets/secret.txt", "gallery/link.png"])
def test_a_file_payload_cannot_name_a_file_outside_the_upload_folder(linked_gallery_app, target):
    _, url, secrets, _ = linked_gallery_app
    payload = {"path": str(secrets.parent / target), "meta": {"_type": "gradio.FileData"}}
    event, data = rest_call(url, "search", [payload, CAPTION, 3, False])
    assert event == "error" and SECRET not in data


def test_results_and_references_are_images_the_client_can_fetch(linked_gallery_app, upload):
    engine, url, _, _ = linked_gallery_app
    client = Client(url, verbose=False)
    answer = client.predict(handle_file(str(upload)), CAPTION, 4, False, api_name="/search")
    assert [r["id"] for r in answer["results"]] == [h.id for h in engine.search(str(upload), CAPTION, k=4).hits]
    client.predict(handle_file(str(upload)), CAPTION, 3, api_name="/compare")
    _, *galleries = client.predict(api_name="/show_comparison")  # the pictures of this client's comparison
    for gallery in galleries:
        assert len(gallery) == 3
        for item in gallery:
            image_id = item["caption"].rsplit(" · ", 1)[-1]
            with Image.open(item["image"]) as shown, Image.open(engine.gallery_path(image_id)) as original:
                assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(original.convert("RGB")))
    reference, info = client.predict("img2.png", api_name="/pick_gallery_image")
    with Image.open(reference) as shown, Image.open(engine.gallery_path("img2.png")) as original:
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(original.convert("RGB")))
    assert "img2.png" in info


def test_examples_and_failure_cards_are_served_from_gradios_cache(served):
    engine, url = served
    client = Client(url, verbose=False)
    dataset = next(c for c in client.config["components"] if c.get("type") == "dataset")
    samples = dataset["props"]["samples"]
    assert samples
    cache = os.path.realpath(os.environ.get("GRADIO_TEMP_DIR", "/tmp/gradio"))
    for sample in samples:
        assert os.path.realpath(sample[0]["path"]).startswith(cache + os.sep)
        response = httpx.get(sample[0]["url"], timeout=30)
        assert response.status_code == 200
        with Image.open(io.BytesIO(response.content)) as image:
            assert max(image.size) <= 128
    reference, info, caption, *_ = client.predict(0, api_name="/load_example")
    with Image.open(reference) as image:
        assert image.size == Image.open(engine.gallery_path(engine.benchmark_queries()[0].reference_id)).size
    assert caption


# ------------------------------------------------------------------ request sizes
def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_a_data_url_over_the_limit_is_refused_before_decoding(monkeypatch, tmp_path):
    from demo import requests as ui

    def never(*args, **kwargs):
        raise AssertionError("decoded an image over the limit")

    oversized = "data:image/png;base64," + "A" * (4 * (ui.MAX_UPLOAD_BYTES // 3) + 8)
    monkeypatch.setattr(ui.base64, "b64decode", never)
    with pytest.raises(QueryError, match="larger than the 10 MB upload limit"):
        ui.uploaded_reference({"url": oversized})
    monkeypatch.undo()
    png = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(png, format="PNG")
    assert ui.uploaded_reference({"url": data_url(png.getvalue())}) == png.getvalue()
    with pytest.raises(QueryError, match="must be base64 encoded"):
        ui.uploaded_reference({"url": "data:image/png,%89PNG"})
    with pytest.raises(QueryError, match="not valid base64"):
        ui.uploaded_reference({"url": "data:image/png;base64,@@@@"})
    large = tmp_path / "large.png"
    with open(large, "wb") as handle:
        handle.truncate(ui.MAX_UPLOAD_BYTES + 1)  # sparse: nothing written
    with pytest.raises(QueryError, match="larger than the 10 MB upload limit"):
        ui.uploaded_reference({"path": str(large)})


def test_a_data_url_over_the_limit_is_refused_by_the_running_app(linked_gallery_app, upload):
    _, url, _, _ = linked_gallery_app
    from demo.requests import MAX_UPLOAD_BYTES

    payload = {"url": data_url(b"\x89PNG" + b"\0" * (MAX_UPLOAD_BYTES + 1)), "meta": {"_type": "gradio.FileData"}}
    event, data = rest_call(url, "search", [payload, CAPTION, 3, False])
    assert event == "error" and "larger than the 10 MB upload limit" in data
    small = {"url": data_url(upload.read_bytes()), "meta": {"_type": "gradio.FileData"}}
    event, data = rest_call(url, "search", [small, CAPTION, 3, False])
    assert event == "complete" and len(json.loads(data)[0]["results"]) == 3


def test_a_request_body_over_the_bound_is_answered_413_unread(linked_gallery_app):
    _, url, _, _ = linked_gallery_app
    from demo.requests import MAX_REQUEST_BYTES

    body = b'{"data": ["' + b"A" * MAX_REQUEST_BYTES + b'"]}'
    response = httpx.post(f"{url}gradio_api/call/search", content=body, timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413 and "request body too large" in response.text

    def chunks():  # no content-length: counted as it arrives
        for _ in range(MAX_REQUEST_BYTES // (1 << 20) + 2):
            yield b"A" * (1 << 20)

    response = httpx.post(f"{url}gradio_api/call/search", content=chunks(), timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code in (400, 413)  # FastAPI answers 400 for a body it could not read to its end


def test_the_app_deletes_old_uploads_and_shown_images(served):
    from demo.ui import CACHE_CLEANUP, build_ui

    frequency, age = build_ui(served[0]).delete_cache
    assert (frequency, age) == CACHE_CLEANUP and 60 <= frequency <= age <= 24 * 3600


# ------------------------------------------------------------------ errors in the server log
def test_a_user_error_logs_one_line_and_an_unexpected_one_its_traceback(caplog):
    from demo.requests import user_errors

    @user_errors
    def refuse():
        raise QueryError("the caption is empty")

    @user_errors
    def crash():
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO, logger="demo.requests"):
        with pytest.raises(gr.Error) as refused:
            refuse()
        with pytest.raises(gr.Error, match=r"internal error \(RuntimeError\): boom") as crashed:
            crash()
    assert refused.value.message == "the caption is empty" and not refused.value.print_exception
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    assert not crashed.value.print_exception  # logged once, below
    first, second = caplog.records
    assert first.levelno == logging.INFO and first.exc_info is None and "the caption is empty" in first.getMessage()
    assert second.levelno == logging.ERROR and second.exc_info[0] is RuntimeError


def test_the_running_app_logs_no_traceback_for_bad_input(linked_gallery_app, upload, capfd, caplog):
    _, url, _, _ = linked_gallery_app
    client = Client(url, verbose=False)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="demo.requests"):
        with pytest.raises(Exception, match="caption is empty"):
            client.predict(handle_file(str(upload)), "   ", 3, False, api_name="/search")
    server_output = capfd.readouterr()
    assert "Traceback" not in server_output.err + server_output.out
    assert [record.getMessage() for record in caplog.records if record.name == "demo.requests"] == [
        "run_search refused: the caption is empty: describe how the target differs from the reference"]


@pytest.mark.parametrize("k, message", [
    pytest.param(10 ** 400, "k must be between 1 and 50, got 1000000000", id="10**400"),
    pytest.param(-10 ** 400, "k must be between 1 and 50, got -1000000000", id="-10**400"),
    pytest.param(51, "k must be between 1 and 50, got 51", id="51"),
])
def test_a_huge_k_is_a_clear_message(linked_gallery_app, upload, k, message):
    _, url, _, _ = linked_gallery_app
    event, data = rest_call(url, "search", [{"path": None, "url": data_url(upload.read_bytes()),
                                              "meta": {"_type": "gradio.FileData"}}, CAPTION, k, False])
    assert event == "error" and message in data and "internal error" not in data


def test_the_engine_takes_a_huge_k_as_the_whole_gallery(linked_gallery_app):
    engine = linked_gallery_app[0]
    everything = len(engine.gallery_ids)
    assert len(engine.search("img0.png", CAPTION, k=10 ** 400, exclude_reference=False).hits) == everything
    assert len(engine.search("img0.png", CAPTION, k="1" + "0" * 400, exclude_reference=False).hits) == everything
    for k in (-10 ** 400, "-" + "9" * 400):
        with pytest.raises(QueryError, match="k must be at least 1"):
            engine.search("img0.png", CAPTION, k=k)
    with pytest.raises(QueryError, match="k must be a whole number"):
        engine.search("img0.png", CAPTION, k="9" * 5000)
