"""`cir space-export`: the folder written is a Space that serves what was exported."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cir_core.cli import main as cir
from cir_core.space_export import (LFS_THRESHOLD_BYTES, ExportSummary, gradio_pin, lfs_patterns, plan_export,
                                   through_lfs)
from standins import needs_real_annotations, write_cirr_val_standin
from tiny_gallery import write_tiny_shapes

REPO = Path(__file__).resolve().parent.parent


def front_matter(text: str) -> dict[str, str]:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "no YAML front matter"
    return {key.strip(): value.strip().strip('"') for key, value in
            (line.split(":", 1) for line in match.group(1).splitlines())}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return write_tiny_shapes(tmp_path_factory.mktemp("shapes") / "tiny-shapes")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint, shapes_dir):
    out = tmp_path_factory.mktemp("export") / "space"
    code = cir(["space-export", str(out), "--model", f"local-dir:{tiny_checkpoint}", "--dataset", "shapes",
                "--data-root", str(shapes_dir), "--title", "Tiny shapes"])
    assert code == 0
    return out


def test_readme_sdk_version_matches_the_gradio_pin():
    pin = gradio_pin((REPO / "requirements.txt").read_text())
    matter = front_matter((REPO / "README.md").read_text())
    assert matter["sdk_version"] == pin
    assert matter["python_version"] == "3.11"


def test_export_holds_the_app_its_code_model_data_and_settings(exported, tiny_checkpoint, shapes_dir):
    files = {path.relative_to(exported).as_posix() for path in exported.rglob("*") if path.is_file()}
    for name in ("app.py", "requirements.txt", "README.md", ".gitattributes", "space_settings.json",
                 "cir_core/__init__.py", "cir_core/cli/space_export.py", "cir_core/presets/tiny-test.json",
                 "demo/__init__.py", "demo/ui.py", "checkpoints/tiny/config.json", "checkpoints/tiny/model.safetensors",
                 "data/tiny-shapes/info.json"):
        assert name in files, name
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in files if name.startswith(("tests/", "runs/", ".git/", "configs/", "assets/"))]
    assert (exported / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()
    assert len([n for n in files if n.startswith("data/tiny-shapes/")]) == \
        len([p for p in shapes_dir.rglob("*") if p.is_file()])
    settings = json.loads((exported / "space_settings.json").read_text())
    assert settings == {"CIR_MODEL": "local-dir:checkpoints/tiny", "CIR_DATASET": "shapes",
                        "CIR_DATA_ROOT": "data/tiny-shapes"}
    matter = front_matter((exported / "README.md").read_text())
    assert matter == {"title": "Tiny shapes", "sdk": "gradio",
                      "sdk_version": gradio_pin((REPO / "requirements.txt").read_text()),
                      "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
                      "app_file": "app.py", "pinned": "false"}
    assert "shapes benchmark" in (exported / "README.md").read_text()
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in (exported / ".gitattributes").read_text()
    assert not list(exported.parent.glob(".space.tmp-*")), "staging leftovers"


def test_lfs_lines_cover_every_large_file():
    big = LFS_THRESHOLD_BYTES + 1
    files = [("checkpoints/m/model.safetensors", big), ("data/g/images/a big.webp", big),
             ("data/g/scenes.json", big), ("app.py", 1000), ("data/g/small.png", LFS_THRESHOLD_BYTES)]
    lines = lfs_patterns(files)
    assert "*.npz filter=lfs diff=lfs merge=lfs -text" in lines
    assert "data/g/images/a[[:space:]]big.webp filter=lfs diff=lfs merge=lfs -text" in lines
    assert "data/g/scenes.json filter=lfs diff=lfs merge=lfs -text" in lines
    assert not [line for line in lines if "small.png" in line or "app.py" in line or "model.safetensors" in line]
    assert [through_lfs(path, size) for path, size in files] == [True, True, True, False, False]


def test_summary_line_names_the_publish_command(tmp_path):
    line = ExportSummary(out=Path("space"), files=3, total_bytes=2_500_000, lfs_files=["a.npz"]).line()
    assert line == ("wrote space: 3 files, 2.5 MB, 1 through LFS; "
                    "publish with `hf upload USER/NAME space --repo-type space`")


def test_refuses_a_folder_that_is_not_empty(tmp_path, tiny_checkpoint, shapes_dir, capsys):
    out = tmp_path / "space"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cir(["space-export", str(out), "--model", f"local-dir:{tiny_checkpoint}", "--dataset", "shapes",
                "--data-root", str(shapes_dir)])
    assert code == 2
    assert "not empty" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


def test_refuses_a_missing_model_and_other_sources(tmp_path, shapes_dir, capsys):
    out = tmp_path / "space"
    assert cir(["space-export", str(out), "--model", f"local-dir:{tmp_path / 'nothing'}", "--dataset", "shapes",
                "--data-root", str(shapes_dir)]) == 2
    assert "model folder" in capsys.readouterr().err
    assert cir(["space-export", str(out), "--model", "hf-hub:org/name", "--dataset", "shapes",
                "--data-root", str(shapes_dir)]) == 2
    assert "only local-dir:" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".space*"))


def test_refuses_an_index_of_other_weights(tmp_path, tiny_checkpoint, shapes_dir, capsys):
    index = tmp_path / "index"
    index.mkdir()
    (index / "info.json").write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    out = tmp_path / "space"
    assert cir(["space-export", str(out), "--model", f"local-dir:{tiny_checkpoint}", "--dataset", "shapes",
                "--data-root", str(shapes_dir), "--index", str(index)]) == 2
    err = capsys.readouterr().err
    assert "other weights" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_index_of_the_same_weights_is_copied_and_baked_in(tmp_path, tiny_checkpoint, shapes_dir):
    from cir_core.checkpoints import load_model, weights_fingerprint

    index = tmp_path / "index"
    index.mkdir()
    fingerprint = weights_fingerprint(load_model(f"local-dir:{tiny_checkpoint}"))
    (index / "info.json").write_text(json.dumps({"fingerprint": fingerprint}))
    export = plan_export(model=f"local-dir:{tiny_checkpoint}", dataset="shapes", data_root=shapes_dir, index=index)
    assert export.settings()["CIR_INDEX"] == "index"


def test_push_creates_the_space_and_uploads_the_folder(exported, monkeypatch, capsys, tmp_path, tiny_checkpoint,
                                                       shapes_dir):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            assert Path(kwargs["folder_path"]).is_dir() and (Path(kwargs["folder_path"]) / "app.py").is_file()
            calls.append(("upload_folder", kwargs))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "space"
    assert cir(["space-export", str(out), "--model", f"local-dir:{tiny_checkpoint}", "--dataset", "shapes",
                "--data-root", str(shapes_dir), "--push", "someone/tiny-space"]) == 0
    assert calls == [("create_repo", "someone/tiny-space", {"repo_type": "space", "space_sdk": "gradio", "exist_ok": True}),
                     ("upload_folder", {"folder_path": str(out), "repo_id": "someone/tiny-space", "repo_type": "space"})]
    assert "pushed to https://huggingface.co/spaces/someone/tiny-space" in capsys.readouterr().out


def test_app_reads_baked_settings_below_environment_and_flags(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO))
    import app

    settings = tmp_path / "space_settings.json"
    settings.write_text(json.dumps({"CIR_MODEL": "local-dir:checkpoints/m", "CIR_DATASET": "shapes",
                                    "CIR_DATA_ROOT": "data/g"}))
    monkeypatch.setattr(app, "SETTINGS_FILE", settings)
    for name in app.BAKED_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.model, args.dataset, args.data_root, args.gallery) == ("local-dir:checkpoints/m", "shapes", "data/g", None)
    monkeypatch.setenv("CIR_DATA_ROOT", "/elsewhere")
    assert app.parse_args([]).data_root == "/elsewhere"
    assert app.parse_args(["--data-root", "/flag"]).data_root == "/flag"
    settings.write_text(json.dumps({"CIR_PORT": "1"}))
    with pytest.raises(app.StartError):
        app.parse_args([])
    monkeypatch.setattr(app, "SETTINGS_FILE", tmp_path / "absent.json")
    assert app.parse_args([]).model is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def first_search(folder: Path, image: str, cache: Path) -> dict:
    """Start the app exported into `folder` from there, importing only its own code, with an
    empty cache, and return its first /search answer."""
    from gradio_client import Client, handle_file

    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CIR_", "GRADIO_"))}
    env.pop("PYTHONPATH", None)
    env.update(CIR_CACHE=str(cache), GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", CIR_PREPARE_FAILURES="0", PYTHONPATH=str(folder),
               CIR_DEVICE="cpu")
    process = subprocess.Popen([sys.executable, "-c", "import runpy, sys, cir_core; "
                                "assert cir_core.__file__.startswith(sys.argv[1]), cir_core.__file__; "
                                "sys.argv = ['app.py']; runpy.run_path('app.py', run_name='__main__')", str(folder)],
                               cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"the exported app exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, "no answer from the exported app within 120 s"
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                return client.predict(handle_file(image), "make it red", 10, False, api_name="/search")
            except Exception:  # not up yet
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_exported_app_starts_from_its_own_folder(exported, tmp_path, shapes_dir):
    image = str(next((shapes_dir / "images").glob("*.png")))
    answer = first_search(exported, image, tmp_path / "cache")
    gallery = json.loads((shapes_dir / "gallery_test.json").read_text())
    results = answer["results"]
    assert len(results) == 10 and all(result["id"] in gallery for result in results)


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "checkpoints" / "scenes3d-mini" / "model.safetensors").is_file()
                    or not (REPO / "assets" / "scenes3d" / "info.json").is_file(),
                    reason="the default demo is not in this checkout")
def test_the_default_demo_exports_within_budget_and_serves_from_its_seed(tmp_path, monkeypatch):
    out = tmp_path / "space"
    monkeypatch.chdir(REPO)
    assert cir(["space-export", str(out)]) == 0
    files = [path for path in out.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 250 * 10**6
    large = [path for path in files if path.stat().st_size > LFS_THRESHOLD_BYTES]
    attributes = (out / ".gitattributes").read_text()
    assert large and all(f"*{path.suffix} " in attributes or str(path.relative_to(out)) in attributes
                         for path in large)
    gallery = json.loads((out / "assets" / "scenes3d" / "gallery_test.json").read_text())
    image = str(out / "assets" / "scenes3d" / "images" / f"{gallery[0]}.webp")
    answer = first_search(out, image, tmp_path / "cache")
    assert len(answer["results"]) == 10 and all(result["id"] in gallery for result in answer["results"])
    # served by the exported model (its name keys the cached index)
    assert any(path.name.startswith("scenes3d-mini-") for path in (tmp_path / "cache" / "indexes").iterdir())


@pytest.mark.slow
@needs_real_annotations
def test_a_cirr_demo_exports_and_serves_its_benchmark(tmp_path, monkeypatch):
    from tiny_gallery import write_image_sensitive_checkpoint

    cirr = write_cirr_val_standin(tmp_path / "cirr_dataset")
    model = write_image_sensitive_checkpoint(tmp_path / "official-standin")
    out = tmp_path / "space"
    assert cir(["space-export", str(out), "--model", f"local-dir:{model}", "--dataset", "cirr",
                "--data-root", str(cirr)]) == 0
    settings = json.loads((out / "space_settings.json").read_text())
    assert settings["CIR_DATASET"] == "cirr" and not Path(settings["CIR_DATA_ROOT"]).is_absolute()
    relpaths = json.loads((cirr / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    image = str(cirr / next(iter(relpaths.values())))
    answer = first_search(out, image, tmp_path / "cache")
    assert len(answer["results"]) == 10 and all(result["id"] in relpaths for result in answer["results"])
