"""Folders written whole or not at all (checkpoints, gallery indexes, caption banks).

The files are written into a staging folder beside the destination, which is renamed into
place once complete: a crash leaves at worst a hidden staging folder, never a half-written
destination, and readers of an older folder there see it whole until it is replaced.

A writer holds an flock on `<staging>.lock` from before its staging folder exists until
after it is gone. The kernel drops the lock with the process, so a later start tells the
leftovers of a killed writer (lock free) from a write in progress (lock held) and removes
them (`remove_abandoned`): a SIGKILL mid-write would otherwise leave a staging folder as
large as the index for good.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_TAG = ".tmp-"  # in the name of every staging folder: .<destination>.tmp-<unique>
_LOCK_SUFFIX = ".lock"
_RETIRED_SUFFIX = ".old"  # the replaced destination, held until the new one is in place
# .<destination>.tmp-<8 characters of tempfile's>, then .old (retired) or .lock; .old-<8> is a retired
# folder of a writer that held no lock file.
_LEFTOVER = re.compile(r"\..+(\.tmp-[a-z0-9_]{8}(\.old)?|\.old-[a-z0-9_]{8})")
# A staging folder without a lock file predates locked writers (or lost its lock file to a
# crash); it is taken for abandoned once it has not changed for this long.
UNLOCKED_GRACE_SECONDS = 600


@contextmanager
def staged_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder; on a clean exit it replaces `out_dir`, on an error it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(out_dir) as staging:
        staging.mkdir()
        try:
            yield staging
            publish_folder(staging, out_dir, Path(f"{staging}{_RETIRED_SUFFIX}"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@contextmanager
def _writer_lock(out_dir: Path) -> Iterator[Path]:
    """Holds a fresh lock file beside `out_dir`; yields the unique staging path named after it."""
    descriptor, lock_name = tempfile.mkstemp(prefix=f".{out_dir.name}{STAGING_TAG}", suffix=_LOCK_SUFFIX,
                                             dir=out_dir.parent)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without flock: cleaners cannot lock it either, so they keep the folder
        yield Path(lock_name[:-len(_LOCK_SUFFIX)])
    finally:
        Path(lock_name).unlink(missing_ok=True)
        os.close(descriptor)


def publish_folder(staging: Path, out_dir: Path, retired: Path) -> None:
    """Rename a finished staging folder to `out_dir`; an older folder there is first moved into
    `retired` (unique to this writer, so that two writers replacing the same folder never remove
    each other's retired copy mid-rename) and removed after."""
    if not out_dir.exists():
        try:
            staging.rename(out_dir)
            return
        except OSError as error:  # another writer put its folder there meanwhile: replace it as below
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    retired.mkdir()
    out_dir.rename(retired / out_dir.name)
    try:
        staging.rename(out_dir)
    except BaseException:
        (retired / out_dir.name).rename(out_dir)  # the older folder stays in service
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def remove_abandoned(folder: str | Path) -> list[Path]:
    """Remove the staging leftovers in `folder` whose writer is gone; returns what was removed.

    A leftover whose lock file is held belongs to a write in progress and is kept.
    """
    folder = Path(folder)
    try:
        entries = {entry.name: entry for entry in folder.iterdir() if entry.name.startswith(".")}
    except OSError:
        return []
    removed = []
    for name, entry in entries.items():
        if not _LEFTOVER.fullmatch(name):
            continue
        base = name[:-len(_RETIRED_SUFFIX)] if name.endswith(_RETIRED_SUFFIX) else name
        lock = entries.get(base + _LOCK_SUFFIX)
        if lock is None:
            if _unchanged_for(entry, UNLOCKED_GRACE_SECONDS) and _remove(entry):
                removed.append(entry)
            continue
        with _lock_if_free(lock) as free:
            if free and _remove(entry):
                removed.append(entry)
                if not any(os.path.lexists(folder / (base + suffix)) for suffix in ("", _RETIRED_SUFFIX)):
                    lock.unlink(missing_ok=True)
    for name, entry in entries.items():  # lock files whose folders are gone (a crash between the two removals)
        if (name.endswith(_LOCK_SUFFIX) and _LEFTOVER.fullmatch(name[:-len(_LOCK_SUFFIX)])
                and not any((folder / (name[:-len(_LOCK_SUFFIX)] + suffix)).exists() for suffix in ("", _RETIRED_SUFFIX))
                and _unchanged_for(entry, UNLOCKED_GRACE_SECONDS)):
            with _lock_if_free(entry) as free:
                if free:
                    entry.unlink(missing_ok=True)
    if removed:
        logger.info("removed %d folders left in %s by interrupted writes: %s", len(removed), folder,
                    ", ".join(path.name for path in removed[:3]))
    return removed


@contextmanager
def _lock_if_free(lock: Path) -> Iterator[bool]:
    """Yields whether `lock` could be locked at once (its writer is gone), holding it meanwhile."""
    try:
        descriptor = os.open(lock, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


def _unchanged_for(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except OSError:
        return False


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return not os.path.lexists(path)
