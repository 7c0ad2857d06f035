"""Test helpers: a tiny shapes benchmark folder, an image-sensitive tiny-test checkpoint, an engine,
the app served in-process, a PNG with a forged size."""
import socket
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

import cir_core
from cir_core.data.shapes import ShapesCounts, write_shapes_dataset
from cir_core.data.registry import open_source
from cir_core.engine import Engine

TINY_COUNTS = ShapesCounts(train=4, val=2, test=16)


def write_tiny_shapes(folder: Path) -> Path:
    """About 50 test-gallery scenes at 32 px, every edit type, fixed seed (well under a second)."""
    write_shapes_dataset(folder, seed=0, image_size=32, counts=TINY_COUNTS, progress=False, workers=1)
    return folder


def write_image_sensitive_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A tiny-test checkpoint whose vectors depend clearly on the image.

    At the default initialisation (std 0.02) a random tiny model gives nearly the same
    vectors for every image, which would hide a mixed-up reference or gallery row;
    larger vision and cross-attention weights make images distinguishable.
    """
    torch.manual_seed(seed)
    model = cir_core.create_model("tiny-test").eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and ("vision_model" in name or "crossattention" in name):
                parameter.normal_(0.0, 0.3)
    return cir_core.save_model(model, folder)


def tiny_engine(checkpoint: Path, shapes_dir: Path, cache_root: Path, **kwargs) -> Engine:
    """An engine serving the tiny shapes benchmark's test split."""
    return Engine.from_uris(f"local-dir:{checkpoint}", source=open_source("shapes", shapes_dir), cache_root=cache_root,
                            progress=False, **kwargs)


@contextmanager
def serving(engine: Engine, examples_file: Path | None = None) -> Iterator[str]:
    """The app over `engine` (with the curated examples of `examples_file`), launched in this process
    on a free local port: yields its URL, closed after."""
    from demo import launch

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = launch(engine, examples_file=examples_file, server_port=port, prevent_thread_lock=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def png_with_forged_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims another size (never decoded, never allocated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def crash_encoding_at_batch(monkeypatch, crash_at: int):
    """Make index builds stop (KeyboardInterrupt) while encoding batch number `crash_at` (1-based), as
    an interrupted build would; returns the real encoder."""
    from cir_core import index_build

    real_encode, calls = index_build._encode_batch, []

    def crash(model, pixels):
        calls.append(len(pixels))
        if len(calls) == crash_at:
            raise KeyboardInterrupt("simulated crash")
        return real_encode(model, pixels)

    monkeypatch.setattr(index_build, "_encode_batch", crash)
    return real_encode
