"""Folders written whole or not at all (checkpoints, gallery indexes, caption banks).

The files are written into a staging folder beside the destination, which is renamed into
place once complete: a crash leaves at worst a hidden staging folder, never a half-written
destination, and readers of an older folder there see it whole until it is replaced.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder; on a clean exit it replaces `out_dir`, on an error it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield staging
        publish_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_folder(staging: Path, out_dir: Path) -> None:
    """Rename a finished staging folder to `out_dir`, replacing an older folder there."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    # A uniquely named holding folder, so that two writers replacing the same folder never
    # remove each other's retired copy mid-rename.
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    out_dir.rename(retired / out_dir.name)
    staging.rename(out_dir)
    shutil.rmtree(retired, ignore_errors=True)
