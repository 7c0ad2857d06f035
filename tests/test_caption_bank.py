"""Caption bank files: one checksummed cache file; a damaged or forged bank is logged once, deleted
and encoded again, never searched."""
import io
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cir_core.cache_files import npy_section, read_cache, write_cache
from cir_core.caption_bank import BANK_SCHEMA, CaptionBank, CaptionBankError, bank_budget
from tiny_gallery import tiny_engine, write_image_sensitive_checkpoint, write_tiny_shapes

TEXTS = ["large red circle top left", "small blue square center", "small green triangle bottom right",
         "large red circle top left; small blue square center", "two yellow stars", "an empty canvas"]
IDS = ["a", "b", "c", "d", "e", None]


def budget(dim):
    return bank_budget(len(TEXTS), dim, len(json.dumps([TEXTS, IDS]).encode()))


@pytest.fixture
def saved(tmp_path, tiny_model):
    bank = CaptionBank.build(tiny_model, TEXTS, IDS, key="k", progress=False)
    return bank, bank.save(tmp_path / "banks" / "x.bank")


def test_a_saved_bank_loads_as_it_was(saved, tiny_model, caplog):
    bank, path = saved
    with caplog.at_level(logging.WARNING):
        again = CaptionBank.cached(path, tiny_model, "k", budget(tiny_model.config.embed_dim))
    assert again.texts == TEXTS and np.array_equal(again.vectors, bank.vectors)
    assert (again.fingerprint, again.key) == (bank.fingerprint, "k")
    assert again.image_ids == IDS and again.vectors.dtype == np.float32 and not caplog.records
    assert [p.name for p in path.parent.iterdir()] == ["x.bank"]


def rewrite(path, meta=None, vectors=None, raw_meta=None, raw_vectors=None):
    """Change the bank's sections and write them back under a valid checksum."""
    sections = read_cache(path, BANK_SCHEMA, 1 << 30)
    stored = json.loads(sections["meta"])
    stored.update(meta or {})
    sections["meta"] = raw_meta if raw_meta is not None else json.dumps(stored).encode()
    if vectors is not None:
        sections["vectors"] = npy_section(vectors(np.load(io.BytesIO(sections["vectors"]))))
    if raw_vectors is not None:
        sections["vectors"] = raw_vectors
    write_cache(path, BANK_SCHEMA, sections)


def with_row(value):
    def change(vectors):
        vectors = vectors.copy()
        vectors[2] = value
        return vectors
    return change


def npy_header(shape, descr="<f4"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


FORGED = {
    "a NaN row": dict(vectors=with_row(np.nan)),
    "an infinite row": dict(vectors=with_row(np.inf)),
    "a zero row": dict(vectors=with_row(0.0)),
    "vectors twice as long": dict(vectors=lambda v: 2 * v),
    "float64 vectors": dict(vectors=lambda v: v.astype(np.float64)),
    "float16 vectors": dict(vectors=lambda v: v.astype(np.float16)),
    "one vector short": dict(vectors=lambda v: v[:-1]),
    "one dimension more": dict(vectors=lambda v: np.pad(v, ((0, 0), (0, 1)))),
    "flat vectors": dict(vectors=lambda v: v.reshape(-1)),
    "texts stored as numbers": dict(meta={"texts": list(range(len(TEXTS)))}),
    "ids stored as numbers": dict(meta={"image_ids": list(range(len(TEXTS)))}),
    "one id short": dict(meta={"image_ids": IDS[:-1]}),
    "no texts": dict(meta={"texts": [], "image_ids": []}, vectors=lambda v: v[:0]),
    "another model's": dict(meta={"fingerprint": "0" * 16}),
    "other texts": dict(meta={"key": "other"}),
    "a deeply nested meta": dict(raw_meta=b"[" * 100_000 + b"]" * 100_000),
    "a huge declared shape": dict(raw_vectors=npy_header((10**12, 32)) + b"\0" * 64),
    "a huge npy header": dict(raw_vectors=b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{" * 64),
    "object vectors": dict(raw_vectors=npy_header((6, 32), "|O") + b"\0" * 64),
}


def check_refused(path, model, caplog):
    with pytest.raises(CaptionBankError):
        CaptionBank.load(path, model=model, key="k")
    with caplog.at_level(logging.WARNING):
        assert CaptionBank.cached(path, model, "k", budget(model.config.embed_dim)) is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "caption bank" in warnings[0].getMessage()
    assert not path.exists()


@pytest.mark.parametrize("forgery", FORGED, ids=list(FORGED))
def test_forged_banks_with_a_valid_checksum_are_refused_and_deleted(saved, tiny_model, caplog, forgery):
    _, path = saved
    rewrite(path, **FORGED[forgery])
    check_refused(path, tiny_model, caplog)


def swap_two_rows(path):
    data = bytearray(path.read_bytes())
    row = 4 * 32  # tiny-test's 32-d float32 rows, the last section of the file
    last, before = data[-row:], data[-2 * row:-row]
    data[-2 * row:] = last + before
    path.write_bytes(bytes(data))


def sparse(path):
    with open(path, "r+b") as handle:
        handle.truncate(8 << 30)


DAMAGED = {
    "two rows swapped": swap_two_rows,
    "a flipped byte": lambda path: path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1])),
    "cut short": lambda path: path.write_bytes(path.read_bytes()[:-7]),
    "8 GiB declared by the file system": sparse,
    "a plain npy file": lambda path: path.write_bytes(npy_section(np.eye(6, 32, dtype=np.float32))),
}


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_damaged_bank_files_are_refused_and_deleted(saved, tiny_model, caplog, damage):
    _, path = saved
    DAMAGED[damage](path)
    check_refused(path, tiny_model, caplog)


class AxisModel:
    """A stand-in text encoder: text i of TEXTS -> the i-th axis of a 6-d space."""

    source_fingerprint = "axes"
    config = SimpleNamespace(embed_dim=len(TEXTS))

    def tokenize_descriptions(self, texts):
        return texts

    def text_vectors(self, texts):
        return torch.eye(len(TEXTS))[[TEXTS.index(text) for text in texts]]


def test_rows_that_do_not_belong_to_their_texts_are_refused_whatever_the_checksum(tmp_path, caplog):
    model = AxisModel()
    bank = CaptionBank.build(model, TEXTS, IDS, key="k", progress=False)
    path = bank.save(tmp_path / "axes.bank")
    assert np.array_equal(CaptionBank.cached(path, model, "k").vectors, np.eye(len(TEXTS)))
    rewrite(path, vectors=lambda v: np.roll(v, 1, axis=0))  # a checksum computed over shuffled rows
    with caplog.at_level(logging.WARNING):
        assert CaptionBank.cached(path, model, "k") is None
    assert "encoded again" in caplog.text and not path.exists()


# ---------------------------------------------------------------------- through the engine
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    checkpoint = write_image_sensitive_checkpoint(root / "model")
    return tiny_engine(checkpoint, write_tiny_shapes(root / "shapes"), root / "cache"), checkpoint, root


def test_the_engine_encodes_a_bad_cached_bank_again_and_shows_its_captions(engine, caplog):
    from demo.render import captions_html

    first, checkpoint, root = engine
    expected = first.prompt_views.caption_bank()
    (path,) = (root / "cache" / "failures" / "caption-banks").glob("*.bank")
    rewrite(path, meta={"texts": list(range(len(expected.texts)))})
    restarted = tiny_engine(checkpoint, root / "shapes", root / "cache")
    with caplog.at_level(logging.WARNING):
        restarted.prepare_caption_bank().join(timeout=120)
    assert sum(r.levelno >= logging.WARNING for r in caplog.records) == 1
    query = restarted.benchmark_queries()[0]
    result = restarted.search(query.reference_id, query.caption, k=3, explain=True)
    assert [m.text for m in result.explanation.query_captions] and all(
        isinstance(m.text, str) for m in result.explanation.query_captions)
    assert "nearest descriptions of gallery images" in captions_html(result.explanation)
    again = CaptionBank.load(path, model=restarted.model, key=expected.key)  # written again, and sound
    assert again.texts == expected.texts and np.allclose(again.vectors, expected.vectors, atol=1e-6)
