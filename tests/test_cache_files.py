"""Cache files: written whole with their checksum and schema; read back only within budget, of the
schema asked for and matching the checksum; anything else is logged once, deleted and reported as None."""
import io
import json
import logging
import os
import time

import numpy as np
import pytest

from cir_core.cache_files import (
    MAGIC,
    CacheFileError,
    json_section,
    load_cache,
    npy_section,
    parse_json,
    parse_npy,
    read_cache,
    write_cache,
)

SCHEMA = "test-cache/1"
SECTIONS = {"meta": b'{"a": 1}', "data": b"0123456789"}


def written(tmp_path):
    return write_cache(tmp_path / "thing.cache", SCHEMA, SECTIONS)


def test_sections_come_back_and_nothing_else_is_left_beside_them(tmp_path):
    path = written(tmp_path)
    assert read_cache(path, SCHEMA, 1 << 20) == SECTIONS
    assert [p.name for p in tmp_path.iterdir()] == ["thing.cache"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = written(tmp_path)
    with pytest.raises(TypeError):
        write_cache(path, SCHEMA, {"meta": b"{}", "data": "not bytes"})
    assert read_cache(path, SCHEMA, 1 << 20) == SECTIONS
    assert [p.name for p in tmp_path.iterdir()] == ["thing.cache"]


def header_line(path):
    return path.read_bytes().split(b"\n", 1)[0] + b"\n"


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "a flipped payload byte": (flip_last_byte, "sha256"),
    "cut short": (lambda p: p.write_bytes(p.read_bytes()[:-3]), "payload bytes"),
    "a byte appended": (lambda p: p.write_bytes(p.read_bytes() + b"x"), "payload bytes"),
    "sections swapped": (lambda p: p.write_bytes(header_line(p) + SECTIONS["data"] + SECTIONS["meta"]), "sha256"),
    "another schema": (lambda p: write_cache(p, "other/1", SECTIONS), "schema 'other/1'"),
    "no header (an older plain file)": (lambda p: p.write_text('{"cases": []}'), "no cache header"),
    "an endless first line": (lambda p: p.write_bytes(MAGIC + b"x" * 6000), "no cache header"),
    "a deeply nested header": (lambda p: p.write_bytes(MAGIC + b"[" * 4000 + b"\n"), "nests too deeply"),
    "a header of the wrong shape": (lambda p: p.write_bytes(
        MAGIC + json.dumps({"schema": SCHEMA, "sha256": "0", "sections": {"meta": 8}}).encode() + b"\n"), "lacks"),
    "a negative section length": (lambda p: p.write_bytes(
        MAGIC + json.dumps({"schema": SCHEMA, "sha256": "0", "sections": [["meta", -1]]}).encode() + b"\n"),
        "name, byte length"),
    "over its budget": (lambda p: p.write_bytes(b"x" * 9000), "over its budget"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damage_is_refused_logged_once_and_deleted(tmp_path, caplog, damage):
    path = written(tmp_path)
    spoil, message = DAMAGE[damage]
    spoil(path)
    with pytest.raises(CacheFileError, match=message):
        read_cache(path, SCHEMA, 8192)
    parsed = []
    with caplog.at_level(logging.WARNING):
        assert load_cache(path, SCHEMA, 8192, parsed.append, "test thing") is None
    assert not parsed and not path.exists()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "computing the test thing again" in caplog.text and "\n" not in caplog.records[0].getMessage()


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = written(tmp_path)
    with open(path, "r+b") as handle:
        handle.truncate(8 << 30)  # sparse: 8 GiB claimed, nothing stored
    started = time.perf_counter()
    assert load_cache(path, SCHEMA, 1 << 20, lambda sections: sections, "test thing") is None
    assert time.perf_counter() - started < 1.0 and not path.exists()


def test_content_refused_by_the_parser_is_deleted(tmp_path, caplog):
    path = written(tmp_path)

    def parse(sections):
        raise CacheFileError("holds nothing useful")

    with caplog.at_level(logging.WARNING):
        assert load_cache(path, SCHEMA, 4096, parse, "test thing") is None
    assert "holds nothing useful" in caplog.text and not path.exists()


def test_a_missing_file_is_none_without_a_word(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_cache(tmp_path / "none.cache", SCHEMA, 4096, lambda s: s, "test thing") is None
    assert not caplog.records


# ---------------------------------------------------------------------- JSON sections
def test_json_sections_refuse_nan_and_deep_nesting():
    with pytest.raises(ValueError):
        json_section({"score": float("nan")})
    assert parse_json(json_section({"texts": ["é", "a\nb"]}), "x") == {"texts": ["é", "a\nb"]}
    for text, message in ((b"[NaN]", "holds NaN"), (b"[-Infinity]", "holds -Infinity"),
                          (b"[" * 200_000 + b"]" * 200_000, "nests too deeply"), (b"\xff", "not JSON"),
                          (b"1" * 5000, "not JSON")):
        with pytest.raises(CacheFileError, match=message):
            parse_json(text, "x")


# ---------------------------------------------------------------------- npy sections
def npy_bytes(header: dict, body: bytes = b"", version=(1, 0)) -> bytes:
    buffer = io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    write(buffer, header)
    return buffer.getvalue() + body


def test_an_npy_section_round_trips_as_an_owned_array():
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    again = parse_npy(npy_section(vectors), np.float32, 2, "vectors")
    assert np.array_equal(again, vectors) and again.dtype == np.float32 and again.flags.writeable


NPY_DAMAGE = {
    "a huge declared shape": (npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (10**12, 32)},
                                        b"\0" * 64), "declares shape"),
    "a huge declared shape, version 2": (npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (2**40, 2**20)},
                                                   b"\0" * 64, version=(2, 0)), "declares shape"),
    "a huge header length": (b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{" * 100, "npy header"),
    "float64": (npy_section(np.zeros((2, 4))), "dtype float64"),
    "float16": (npy_section(np.zeros((2, 4), dtype=np.float16)), "dtype float16"),
    "big-endian float32": (npy_section(np.zeros((2, 4), dtype=">f4")), "dtype >f4"),
    "objects": (npy_bytes({"descr": "|O", "fortran_order": False, "shape": (2, 4)}, b"\0" * 64), "dtype object"),
    "fortran order": (npy_bytes({"descr": "<f4", "fortran_order": True, "shape": (2, 4)}, b"\0" * 32), "fortran"),
    "one dimension": (npy_section(np.zeros(8, dtype=np.float32)), "2 dimensions"),
    "a short body": (npy_section(np.zeros((2, 4), dtype=np.float32))[:-4], "declares shape"),
    "not npy": (b"not numpy at all", "npy header"),
}


@pytest.mark.parametrize("damage", NPY_DAMAGE, ids=list(NPY_DAMAGE))
def test_npy_sections_are_checked_before_any_array_is_made(damage):
    data, message = NPY_DAMAGE[damage]
    with pytest.raises(CacheFileError, match=message):
        parse_npy(data, np.float32, 2, "vectors")


def test_no_temporary_file_survives_an_interrupted_write(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "thing.cache", SCHEMA, SECTIONS)
    assert list(tmp_path.iterdir()) == []
