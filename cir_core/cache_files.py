"""Cache files: what the library computes once and keeps across restarts, never trusted blindly.

A cache file is one header line, then a payload made of named sections:

    cir-cache {"schema": "benchmark-ranks/2", "sections": [["ranks", 5120]], "sha256": "..."}\\n
    <the sections' bytes, one after the other>

It is written whole or not at all (a temporary file beside it, renamed into place). It is
read back only when its size is within the caller's budget (checked before anything is
read), its schema is the one asked for and its payload matches the sha256; the caller
then checks the content itself (`load_cache`'s `parse`). A file failing any check is
logged in one warning line and deleted, and the caller computes it again: a damaged cache
costs time, never a wrong answer and never a lasting failure.

Sections are JSON (`json_section` / `parse_json`) or numpy arrays (`npy_section` /
`parse_npy`, whose header is read and checked against the bytes that follow before any
array is allocated).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

MAGIC = b"cir-cache "
MAX_HEADER_BYTES = 4096  # a schema, a checksum and a few section names
MAX_NPY_HEADER_BYTES = 4096  # an (N, D) array's npy header is about 128 bytes

Parsed = TypeVar("Parsed")


class CacheFileError(ValueError):
    """A cache file that cannot be used: over its budget, of another schema, damaged, or with bad content."""


def write_cache(path: str | Path, schema: str, sections: dict[str, bytes]) -> Path:
    """Write `sections` under `schema` to `path` atomically, with the payload's sha256."""
    path = Path(path)
    digest = hashlib.sha256()
    for data in sections.values():
        digest.update(data)
    header = {"schema": schema, "sections": [[name, len(data)] for name, data in sections.items()],
              "sha256": digest.hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # No fsync: a file torn by a crash fails its checksum and is computed again.
        with os.fdopen(handle, "wb") as out:
            out.write(MAGIC + json.dumps(header).encode() + b"\n")
            for data in sections.values():
                out.write(data)
        os.replace(staging, path)  # readers see the old file or the new one, never half of one
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def read_cache(path: str | Path, schema: str, max_bytes: int) -> dict[str, bytes]:
    """The sections of the cache file at `path`; CacheFileError unless it is within `max_bytes`,
    of `schema` and matches its checksum (FileNotFoundError when there is none)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise CacheFileError(f"{size} bytes, over its budget of {max_bytes}")
    with open(path, "rb") as handle:
        line = handle.readline(MAX_HEADER_BYTES)
        if not line.startswith(MAGIC) or not line.endswith(b"\n"):
            raise CacheFileError("no cache header (not a cache file, or written by an older version)")
        header = parse_json(line[len(MAGIC):], "the header")
        names, lengths = _header_sections(header)
        if header["schema"] != schema:
            raise CacheFileError(f"schema {header['schema']!r:.80}, expected {schema!r}")
        if size - len(line) != sum(lengths):
            raise CacheFileError(f"{size - len(line)} payload bytes, the header lists {sum(lengths)}")
        payload = handle.read(sum(lengths))
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CacheFileError("the payload does not match its sha256 checksum")
    sections, start = {}, 0
    for name, length in zip(names, lengths):
        sections[name] = payload[start:start + length]
        start += length
    return sections


def _header_sections(header: Any) -> tuple[list[str], list[int]]:
    if not (isinstance(header, dict) and isinstance(header.get("schema"), str)
            and isinstance(header.get("sha256"), str) and isinstance(header.get("sections"), list)):
        raise CacheFileError("the header lacks its schema, checksum or sections")
    entries = header["sections"]
    if not all(isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
               and type(entry[1]) is int and entry[1] >= 0 for entry in entries):
        raise CacheFileError("the header's sections are not [name, byte length] pairs")
    names = [entry[0] for entry in entries]
    if len(set(names)) != len(names):
        raise CacheFileError("the header names a section twice")
    return names, [entry[1] for entry in entries]


def load_cache(path: str | Path, schema: str, max_bytes: int, parse: Callable[[dict[str, bytes]], Parsed],
               what: str) -> Parsed | None:
    """`parse(sections)` of the cache file at `path`, or None when there is none or it is unusable.

    `parse` checks the content and raises ValueError (CacheFileError) on anything wrong.
    An unusable file is logged in one warning line naming `what` and the reason, and
    deleted, so that the caller's new copy replaces it.
    """
    try:
        return parse(read_cache(path, schema, max_bytes))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
        discard(path, what, error)
        return None


def discard(path: str | Path, what: str, reason: BaseException | str) -> None:
    """Log in one line that the cached `what` at `path` is unusable, and delete it."""
    logger.warning("computing the %s again: cached %s is unusable (%s)", what, path, _one_line(reason))
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:  # e.g. a folder in its place; writing the new copy reports what is wrong
        pass


def _one_line(reason: BaseException | str) -> str:
    text = str(reason) if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------- section formats
def json_section(value: Any) -> bytes:
    """`value` as JSON bytes; ValueError for NaN or infinity, which no cache holds."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def parse_json(data: bytes, what: str) -> Any:
    """The JSON value in `data`; CacheFileError when it is not JSON, holds NaN or infinity, or nests too deeply."""
    def refuse_constant(name: str):
        raise CacheFileError(f"{what} holds {name}")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
    except RecursionError:
        raise CacheFileError(f"{what} nests too deeply") from None
    except CacheFileError:
        raise
    except (UnicodeDecodeError, ValueError) as error:  # ValueError: also an integer of too many digits
        raise CacheFileError(f"{what} is not JSON ({error})") from None


def npy_section(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def parse_npy(data: bytes, dtype: np.dtype | str, ndim: int, what: str) -> np.ndarray:
    """The array in npy bytes `data`, refused (CacheFileError) unless it is C-ordered `dtype` with
    `ndim` dimensions and its header's shape accounts for exactly the bytes that follow.

    The header is checked before the array is made, so a header declaring a huge shape
    allocates nothing.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise CacheFileError(f"{what}: npy format version {version} is not one numpy writes for arrays")
        shape, fortran_order, stored = read_header(stream, max_header_size=MAX_NPY_HEADER_BYTES)
    except CacheFileError:
        raise
    except (ValueError, SyntaxError, RecursionError, MemoryError) as error:
        raise CacheFileError(f"{what}: unreadable npy header ({_one_line(error)})") from None
    expected = np.dtype(dtype)
    if stored != expected:
        raise CacheFileError(f"{what} has dtype {stored}, expected {expected}")
    if fortran_order or len(shape) != ndim or any(size < 0 for size in shape):
        raise CacheFileError(f"{what} has shape {shape} (fortran order {fortran_order}), expected {ndim} dimensions")
    offset = stream.tell()
    count = math.prod(shape)
    if count * expected.itemsize != len(data) - offset:
        raise CacheFileError(f"{what}: the header declares shape {shape} but {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype=expected, count=count, offset=offset).reshape(shape).copy()
