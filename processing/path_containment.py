"""Whether a path stays inside a folder once every symbolic link is followed: the rule that keeps annotation paths
inside the data root (processing/scannet_layout.py) and uploads inside their allowed folders (cli/uploads.py). Light
to import (pathlib only): `gap-mllm predict` checks its paths before torch is imported."""

from __future__ import annotations

import errno
from pathlib import Path


def _resolve(path: Path) -> Path:
    """`path.resolve()`, with a symbolic link loop raised as `OSError(ELOOP)` naming the path (Python
    before 3.13 raises a bare RuntimeError there)."""
    try:
        return path.resolve()
    except RuntimeError as error:
        raise OSError(errno.ELOOP, "symbolic link loop", str(path)) from error


def resolve_inside(root, path) -> Path | None:
    """`path` (relative to `root`, or absolute) with every symbolic link followed, if the result lies
    inside `root` (also resolved) or is `root` itself; None otherwise. Nothing needs to exist; a symbolic
    link loop raises `OSError` (errno ELOOP)."""
    root = _resolve(Path(root))
    real = _resolve(root / Path(path))
    return real if real == root or real.is_relative_to(root) else None
