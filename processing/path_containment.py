"""Whether a path stays inside a folder once every symbolic link is followed: the rule that keeps annotation paths
inside the data root (processing/scannet_layout.py) and uploads inside their allowed folders (cli/uploads.py); and
what a symbolic link that leads nowhere is (`broken_link`), so that a link loop is named as one, not as a file that
is missing. Light to import (os, pathlib): `gap-mllm predict` checks its paths before torch is imported."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

LINK_LOOP = "a symbolic link loop (following its links leads back to itself)"
# Python before 3.13: `Path.resolve` raises RuntimeError("Symlink loop from '<path>'")
_PATHLIB_LOOP = re.compile(r"^Symlink loop from (['\"])(.*)\1$", re.S)


def resolve_path(path) -> Path:
    """`Path(path).resolve()`, with a symbolic link loop raised as `OSError(ELOOP)` naming the path (Python
    before 3.13 raises a bare RuntimeError there)."""
    path = Path(path)
    try:
        return path.resolve()
    except RuntimeError as error:
        raise OSError(errno.ELOOP, "symbolic link loop", str(path)) from error


def resolve_inside(root, path) -> Path | None:
    """`path` (relative to `root`, or absolute) with every symbolic link followed, if the result lies
    inside `root` (also resolved) or is `root` itself; None otherwise. Nothing needs to exist; a symbolic
    link loop raises `OSError` (errno ELOOP)."""
    root = resolve_path(root)
    real = resolve_path(root / Path(path))
    return real if real == root or real.is_relative_to(root) else None


def broken_link(path) -> str | None:
    """What `path` is, in words, when following its symbolic links leads nowhere: "a symbolic link loop (...)" (the
    path, or a folder above it, links back to itself) or "a symbolic link to T, which does not exist"; None for any
    other path (a plain one, a link that reaches a file or folder, a path that is simply missing)."""
    try:
        os.stat(path)
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return LINK_LOOP
        if error.errno != errno.ENOENT or not os.path.islink(path):
            return None
    return f"a symbolic link to {os.readlink(path)}, which does not exist"


def link_loop_of(error: BaseException) -> str | None:
    """The path whose symbolic links loop, when `error` says that it does (an `OSError` of errno ELOOP, or the
    RuntimeError that `Path.resolve` raises before Python 3.13); None for any other error, or one naming no path."""
    if isinstance(error, OSError) and error.errno == errno.ELOOP and error.filename is not None:
        return os.fsdecode(error.filename)
    found = _PATHLIB_LOOP.match(str(error)) if type(error) is RuntimeError else None
    return found.group(2) if found else None
