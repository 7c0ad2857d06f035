"""Which cached index serves which model and gallery; start-up on a damaged, busy, full or unusable cache."""
import errno
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cir_core
import cir_core.index_build as index_build
import cir_core.index_cache as index_cache
from cir_core.atomic import remove_abandoned, staged_folder
from cir_core.engine import Engine
from cir_core.index import GalleryIndex
from cir_core.index_build import BuildInProgressError
from cir_core.index_cache import GalleryKey, default_gallery_index, usable_cache_root
from tiny_gallery import crash_encoding_at_batch

ROOT = Path(__file__).resolve().parents[1]


def _png_folder(folder: Path, count: int, seed: int = 0, start: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(start, start + count):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / f"im{number:02d}.png")
    return folder


def _serve(checkpoint: Path, gallery: Path, cache: Path) -> Engine:
    return Engine.from_uris(f"local-dir:{checkpoint}", gallery_data=gallery, cache_root=cache, progress=False)


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def _all_paths(folder: Path) -> list[Path]:
    return [Path(top) / name for top, dirs, files in os.walk(folder) for name in dirs + files]


# ---------------------------------------------------------------------- which index serves which gallery
def test_folders_of_the_same_name_elsewhere_get_their_own_index(tmp_path, tiny_checkpoint):
    first = _png_folder(tmp_path / "a" / "photos", 3, seed=1)
    second = _png_folder(tmp_path / "b" / "photos", 3, seed=2)
    cache = tmp_path / "cache"
    served_first, served_second = _serve(tiny_checkpoint, first, cache), _serve(tiny_checkpoint, second, cache)
    assert all(_inside(Path(served_second.gallery_path(i)), second) for i in served_second.gallery_ids)
    assert all(_inside(Path(served_first.gallery_path(i)), first) for i in served_first.gallery_ids)
    assert not np.allclose(served_first.index.vectors([0]), served_second.index.vectors([0]))


def test_a_changed_gallery_is_indexed_again_and_says_so(tmp_path, tiny_checkpoint, caplog):
    gallery = _png_folder(tmp_path / "photos", 3)
    cache = tmp_path / "cache"
    assert _serve(tiny_checkpoint, gallery, cache).gallery_ids == ["im00.png", "im01.png", "im02.png"]

    _png_folder(gallery, 1, seed=7, start=3)
    with caplog.at_level(logging.INFO, logger="cir_core.index_cache"):
        grown = _serve(tiny_checkpoint, gallery, cache)
    assert grown.gallery_ids == ["im00.png", "im01.png", "im02.png", "im03.png"]
    assert sum("changed since it was indexed" in r.getMessage() for r in caplog.records) == 1
    assert len([p for p in (cache / "indexes").iterdir() if not p.name.startswith(".")]) == 1  # the older one removed

    (gallery / "im01.png").unlink()
    assert _serve(tiny_checkpoint, gallery, cache).gallery_ids == ["im00.png", "im02.png", "im03.png"]

    before = _serve(tiny_checkpoint, gallery, cache).index.vectors([0])
    _png_folder(gallery, 1, seed=11, start=0)  # im00.png rewritten with other pixels
    os.utime(gallery / "im00.png", ns=(1, 1))
    after = _serve(tiny_checkpoint, gallery, cache).index.vectors([0])
    assert not np.allclose(before, after)


def test_cache_folder_names_take_nothing_unchecked_from_the_model_or_a_precision(tmp_path, tiny_model):
    model = cir_core.create_model("tiny-test").eval()
    model.config.name = "../../outside/x"
    checkpoint = cir_core.save_model(model, tmp_path / "model")
    gallery = _png_folder(tmp_path / "photos", 2)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(cir_core.CheckpointError, match="the name must be"):  # refused before any cache is named
        _serve(checkpoint, gallery, cache)
    expected = (cache, tmp_path / "photos", tmp_path / "model")
    created = [p for p in _all_paths(tmp_path)
               if p not in (*expected, tmp_path / "deep") and not any(_inside(p, folder) for folder in expected)]
    assert created == []
    key = GalleryKey.of(tiny_model, [], "../..", root="/")
    with pytest.raises(ValueError, match="precision"):
        key.folder_name("../../x")
    assert "/" not in key.folder_name("fp32") and ".." not in key.folder_name("fp32")


# ---------------------------------------------------------------------- interrupted and concurrent builds
@pytest.mark.parametrize("damage", ["empty vectors", "truncated vectors", "bad record"])
def test_a_damaged_batch_of_an_interrupted_build_is_encoded_again(tmp_path, tiny_model, monkeypatch, caplog, damage):
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 7))
    out = tmp_path / "index"
    real_encode = crash_encoding_at_batch(monkeypatch, crash_at=3)
    with pytest.raises(KeyboardInterrupt):
        GalleryIndex.build(tiny_model, items, out, batch_size=2, progress=False)
    monkeypatch.setattr(index_build, "_encode_batch", real_encode)
    work = tmp_path / ".index.work"
    if damage == "empty vectors":
        (work / "batch_0000000.npy").write_bytes(b"")
    elif damage == "truncated vectors":
        data = (work / "batch_0000001.npy").read_bytes()
        (work / "batch_0000001.npy").write_bytes(data[:-10])
    else:
        (work / "batch_0000000.json").write_text('{"kept": [0, 5], "sizes": [], "skipped": [], "files": []}')
    with caplog.at_level(logging.WARNING, logger="cir_core.index_build"):
        resumed = GalleryIndex.build(tiny_model, items, out, batch_size=2, progress=False)
    assert "encoded again: their stored results are damaged" in caplog.text
    assert resumed.report.resumed_batches == 1
    fresh = GalleryIndex.build(tiny_model, items, tmp_path / "fresh", batch_size=2, progress=False, resume=False)
    np.testing.assert_allclose(resumed.vectors(range(7)), fresh.vectors(range(7)), atol=1e-6)


def test_a_second_start_waits_for_the_first_ones_build_and_serves_it(tmp_path, tiny_model, monkeypatch, caplog):
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 4))
    cache = tmp_path / "cache"
    real_encode, started, release, encoded = index_build._encode_batch, threading.Event(), threading.Event(), []

    def slow_encode(model, pixels):
        encoded.append(threading.current_thread().name)
        started.set()
        release.wait(30)
        return real_encode(model, pixels)

    monkeypatch.setattr(index_build, "_encode_batch", slow_encode)
    real_wait = index_cache.wait_for_build

    def release_then_wait(folder, timeout):
        release.set()  # the first build finishes only once the second start is waiting for it
        return real_wait(folder, timeout)

    monkeypatch.setattr(index_cache, "wait_for_build", release_then_wait)
    results = {}

    def start(name):
        results[name] = default_gallery_index(tiny_model, items, cache, "images", progress=False, precision="fp32")

    first = threading.Thread(target=start, args=("first",), name="first")
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=start, args=("second",), name="second")
    with caplog.at_level(logging.INFO, logger="cir_core.index_cache"):
        second.start()
        first.join(60)
        second.join(60)
    assert "waiting for it" in caplog.text
    assert set(encoded) == {"first"}  # the second start encoded nothing
    assert results["second"].ids == results["first"].ids == [item.id for item in items]


def test_waiting_for_another_build_gives_up_with_one_line(tmp_path, tiny_model, monkeypatch):
    items = index_build.items_from_images(_png_folder(tmp_path / "images", 2))
    cache = tmp_path / "cache"
    monkeypatch.setattr(index_cache, "BUILD_WAIT_SECONDS", 0.5)
    folder = cache / "indexes" / GalleryKey.of(tiny_model, items, "images").folder_name("fp32")
    with index_build.destination_lock(folder):  # another build holds it throughout
        with pytest.raises(BuildInProgressError, match="still indexing this gallery") as raised:
            default_gallery_index(tiny_model, items, cache, "images", progress=False, precision="fp32")
    assert "\n" not in str(raised.value)


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from cir_core.atomic import staged_folder
    with staged_folder(sys.argv[1]) as staging:
        (staging / "vectors.faiss").write_bytes(b"x" * 4096)
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.slow  # a real writer process, killed
def test_leftovers_of_a_killed_writer_are_removed_at_the_next_start(tmp_path, tiny_checkpoint):
    gallery = _png_folder(tmp_path / "photos", 2)
    cache = tmp_path / "cache"
    indexes = cache / "indexes"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(indexes / "some-index")], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert killed.returncode == -9
    assert any(".some-index.tmp-" in p.name for p in indexes.iterdir())  # what a SIGKILL leaves behind
    with staged_folder(indexes / "written-now") as live:  # a write in progress: kept
        (live / "info.json").write_text("{}")
        _serve(tiny_checkpoint, gallery, cache)
        left = sorted(p.name for p in indexes.iterdir() if ".tmp-" in p.name)
        assert left and all(name.startswith(".written-now.tmp-") for name in left)
    assert not any(".tmp-" in p.name for p in indexes.iterdir())
    assert (indexes / "written-now" / "info.json").is_file()


def test_a_staging_folder_from_before_writers_held_locks_is_removed_once_stale(tmp_path):
    legacy = tmp_path / ".index.tmp-abcd1234"
    legacy.mkdir()
    assert remove_abandoned(tmp_path) == []  # could be a write in progress
    os.utime(legacy, (0, 0))
    assert remove_abandoned(tmp_path) == [legacy] and not legacy.exists()


# ---------------------------------------------------------------------- start-up on an unusable cache
def _load_app():
    spec = importlib.util.spec_from_file_location("app_for_cache_tests", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("where", ["a file", "a path under a file"])
def test_an_unusable_cache_falls_back_to_a_temporary_one(tmp_path, monkeypatch, caplog, where):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv("CIR_CACHE", str(blocker if where == "a file" else blocker / "cache"))
    app, seen = _load_app(), {}

    def stop_after_reading(*args, **kwargs):
        seen.update(kwargs)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(app.Engine, "from_uris", stop_after_reading)
    with caplog.at_level(logging.WARNING, logger="cir_core.index_cache"):
        assert app.main(["--index", str(tmp_path / "none")]) == 2
    fallback = seen["cache_root"]
    assert fallback.is_dir() and not _inside(fallback, tmp_path) and fallback != blocker
    lines = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(lines) == 1 and str(blocker) in lines[0] and str(fallback) in lines[0]
    fallback.rmdir()


def test_a_cache_that_cannot_be_replaced_stops_with_one_line(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv("CIR_CACHE", str(blocker))
    app = _load_app()

    def no_temporary_folder(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_cache.tempfile, "mkdtemp", no_temporary_folder)
    monkeypatch.setattr(app.Engine, "from_uris", lambda *a, **k: pytest.fail("must stop before loading anything"))
    assert app.main([]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot start the app" in error and "CIR_CACHE" in error
    assert "Traceback" not in error


def test_a_full_disk_while_indexing_stops_with_one_line_and_the_next_start_works(tmp_path, tiny_checkpoint,
                                                                                  monkeypatch, capsys):
    gallery = _png_folder(tmp_path / "photos", 5)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CIR_CACHE", str(cache))
    app, real_save = _load_app(), np.save

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_build.np, "save", disk_full)
    assert app.main(["--model", f"local-dir:{tiny_checkpoint}", "--gallery", str(gallery)]) == 2
    error = capsys.readouterr().err  # after the progress bar's lines
    last = error.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("cannot start the app") and "No space left on device" in last and str(cache) in last
    assert "Traceback" not in error
    monkeypatch.setattr(index_build.np, "save", real_save)
    assert _serve(tiny_checkpoint, gallery, cache).gallery_ids == [f"im{n:02d}.png" for n in range(5)]


def test_usable_cache_root_keeps_a_writable_folder(tmp_path):
    assert usable_cache_root(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"
    assert (tmp_path / "new" / "cache").is_dir()
