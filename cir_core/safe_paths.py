"""Whether a file named by a folder listing, an annotation or an index stays inside the folder it belongs to.

Names in annotation files and index metadata are data that travels with downloads: an
absolute path, a `..` part or a symbolic link would otherwise make a reader open, and an
app show, any file of the machine.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath


class PathOutsideRootError(ValueError):
    """An annotation names a file outside its data root; the message names the entry."""


def outside_root(real_root: str | Path, entry: str | Path, allow_absolute: bool = False) -> str | None:
    """Why `entry` leaves `real_root`, or None when it stays inside once every link is resolved.

    `real_root` must already be resolved (`Path.resolve()`): checking many entries then costs
    one `realpath` each, and an unresolved root fails closed. `entry` is relative to the root;
    an absolute entry is refused unless `allow_absolute`, and then must lie inside the root too.
    """
    entry = PurePath(entry)
    if entry.is_absolute() and not allow_absolute:
        return "is an absolute path"
    if ".." in entry.parts:
        return "has a '..' part"
    root = os.path.normpath(real_root)
    try:
        real = os.path.realpath(os.path.join(root, entry))
        inside = os.path.commonpath([root, real]) == root
    except ValueError:  # an embedded NUL byte
        return "is not a usable file name"
    return None if inside else f"leads outside {root} (to {real})"
