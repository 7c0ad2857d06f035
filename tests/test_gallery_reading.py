"""Gallery builds decode and preprocess images on several threads ahead of the model: the index is
the one a single reader gives, batches come back in order, the pixels in the encoder's dtype,
and the progress bar shows images per second."""
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cir_core import index_build
from cir_core.index import GalleryIndex, IndexParams
from cir_core.transforms import ImageTransform


def _gallery(folder, count: int, seed: int = 0):
    """`count` PNGs of different sizes, a text file and a truncated PNG among them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for number in range(count):
        width, height = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"im{number:02d}.png")
    (folder / "im03.png").write_bytes((folder / "im04.png").read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image")
    return index_build.items_from_images(folder)


def _build(model, items, out, workers, **kwargs):
    index_build.build_gallery_index(model, items, out, IndexParams(kind="flat"), batch_size=3, progress=False,
                                    read_workers=workers, **kwargs)
    return GalleryIndex.load(out, model=model)


@pytest.mark.parametrize("workers", [2, 5])
def test_several_readers_build_the_index_one_reader_builds(tmp_path, tiny_model, workers):
    items = _gallery(tmp_path / "images", 13)
    serial = _build(tiny_model, items, tmp_path / "serial", 1, store_vision_features=True)
    parallel = _build(tiny_model, items, tmp_path / "parallel", workers, store_vision_features=True)
    assert parallel.ids == serial.ids and len(serial) == 12
    assert np.array_equal(parallel.vectors(range(12)), serial.vectors(range(12)))
    assert all(np.array_equal(parallel.vision_features(row), serial.vision_features(row)) for row in range(12))
    assert parallel.sizes == serial.sizes
    assert [s.id for s in parallel.report.skipped] == [s.id for s in serial.report.skipped] == ["im03.png",
                                                                                              "notes.txt"]


def test_batches_come_back_in_order_with_at_most_workers_read_at_once(tmp_path, tiny_model, monkeypatch):
    items = _gallery(tmp_path / "images", 14)
    batches = [items[start:start + 2] for start in range(0, len(items), 2)]
    real_read, lock, state = index_build._read_batch, threading.Lock(), {"now": 0, "most": 0}

    def read(batch, *args):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05 if batch is batches[0] else 0.01)  # the first batch finishes last
        try:
            return real_read(batch, *args)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(index_build, "_read_batch", read)
    transform = ImageTransform(tiny_model.config.preprocess)
    reads = list(index_build.read_batches(batches, transform, workers=3))
    assert state["most"] == 3
    expected = [real_read(batch, transform) for batch in batches]
    assert [read.kept for read in reads] == [read.kept for read in expected]
    for read, reference in zip(reads, expected):
        assert (read.pixels is None) == (reference.pixels is None)
        assert read.pixels is None or torch.equal(read.pixels, reference.pixels)


def test_pixels_come_in_the_encoders_dtype(tmp_path, tiny_model):
    items = _gallery(tmp_path / "images", 5)
    transform = ImageTransform(tiny_model.config.preprocess)
    fp32 = next(index_build.read_batches([items[:3]], transform))
    halved = next(index_build.read_batches([items[:3]], transform, pixel_dtype=torch.float16))
    assert fp32.pixels.dtype == torch.float32 and halved.pixels.dtype == torch.float16
    assert torch.equal(halved.pixels, fp32.pixels.half())
    assert fp32.kept == [0, 1, 2] and fp32.sizes[0] == list(Image.open(items[0].path).size)


def test_read_workers_by_device():
    assert index_build.default_read_workers(torch.device("cpu")) == 1
    cuda = index_build.default_read_workers(torch.device("cuda"))
    assert 1 <= cuda <= index_build.MAX_READ_WORKERS


def test_the_progress_bar_shows_images_per_second(tmp_path, tiny_model, capsys):
    items = _gallery(tmp_path / "images", 7)
    index_build.build_gallery_index(tiny_model, items, tmp_path / "index", IndexParams(kind="flat"), batch_size=3,
                                    progress=True)
    bar = capsys.readouterr().err
    assert "encoding gallery" in bar and "8/8" in bar and "img/s" in bar


def test_a_bad_worker_count_is_one_clear_error(tmp_path, tiny_model):
    items = _gallery(tmp_path / "images", 5)
    with pytest.raises(ValueError, match="read_workers must be at least 1, got 0"):
        _build(tiny_model, items, tmp_path / "index", 0)
