"""How the Space lays out a request's frames: every view whole and every view in sight.

The gallery shows each frame at its own aspect ratio (object-fit contain, the cell as tall as its frame: no crop, so
an answer drawn near an edge, such as the point's edge wedge, stays visible) in a grid whose column count is chosen
here so that up to 8 views fit the height a 1280×800 window leaves below the page's header. For the marker task the
marked view comes first. Light to import (no gradio): the Space's UI (space_ui.py) and its tests use it.
"""

from __future__ import annotations

import math

# The output column at a 1280-pixel-wide window (2/3 of the row less gradio's padding), and the height its frames may
# take so that the grid ends inside an 800-pixel-high window (the header, notices and status line take the rest);
# tests/test_space_browser.py checks both in Chromium.
FRAMES_WIDTH_PX = 800
FRAMES_HEIGHT_PX = 400
GAP_PX = 16  # gradio's grid gap (--spacing-lg) and a cell's border
CAPTION_PX = 24  # a view's caption, under its frame
MIN_COLUMNS = 2  # one frame alone takes half the width, not the whole column

# Scoped to the frames gallery (elem_id "frames"): gradio's own cells are squares filled with object-fit cover,
# in a box of fixed height that scrolls, under the gallery's label and their captions. Here a cell is as tall as its
# frame (so the image element has the frame's aspect ratio), the rows take what they need, nothing scrolls, the grid
# starts below the label and each caption stands under its frame: nothing lies on a frame.
FRAMES_CSS = """
#frames .grid-wrap { height: auto; min-height: 0; max-height: none; overflow-y: visible; }
#frames .grid-container { grid-template-rows: none; grid-auto-rows: auto; align-items: start; padding-top: 28px; }
#frames .thumbnail-item { aspect-ratio: auto; height: auto; }
#frames .thumbnail-item img { height: auto; object-fit: contain; }
#frames .thumbnail-item .caption-label { position: static; display: block; max-width: none; border: 0; }
"""


def grid_columns(sizes: list[tuple[int, int]]) -> int:
    """The fewest columns (at least `MIN_COLUMNS`) in which frames of `sizes` `(width, height)`, each as wide as a
    column with its caption under it, fit `FRAMES_HEIGHT_PX`; as many columns as frames when none does (one row)."""
    if not sizes:
        return MIN_COLUMNS
    tallest = max(height / width for width, height in sizes)
    count = len(sizes)
    for columns in range(MIN_COLUMNS, max(count, MIN_COLUMNS) + 1):
        rows = math.ceil(count / columns)
        cell = (FRAMES_WIDTH_PX - (columns - 1) * GAP_PX) / columns
        if rows * (cell * tallest + CAPTION_PX) + (rows - 1) * GAP_PX <= FRAMES_HEIGHT_PX:
            return columns
    return max(count, MIN_COLUMNS)


def frame_order(count: int, marker=None) -> list[int]:
    """The views in the order the gallery shows them: the marked view `marker[0]` first (the marker task), then the
    others in order."""
    if marker is None or not 0 <= int(marker[0]) < count:
        return list(range(count))
    marked = int(marker[0])
    return [marked] + [index for index in range(count) if index != marked]


def frame_caption(index: int, marker=None) -> str:
    """The caption under a view: its number in the request, and "marked" for the marker's view."""
    marked = marker is not None and int(marker[0]) == index
    return f"frame {index} (marked)" if marked else f"frame {index}"
