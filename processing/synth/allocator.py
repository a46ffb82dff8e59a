"""Keep numpy's per-frame temporaries in the heap while rendering (glibc only).

Rendering one 640x480 frame allocates a few dozen ~1 MB float32 planes. glibc serves blocks above
its mmap threshold with fresh `mmap` pages and returns them on free, so every frame pays the page
faults again: about half of the render time. Raising the mmap and trim thresholds (what the
`MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` environment variables do at start-up) lets freed
planes be reused. It changes nothing but speed; on other C libraries it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_large_allocations_in_heap() -> bool:
    """Ask glibc to reuse freed blocks up to 256 MB instead of unmapping them; True if it applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES))
