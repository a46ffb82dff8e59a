"""The official GAP-MLLM visual prompt: a red "+" painted into one view before any resizing.

Geometry (docs/method.md §3.6, official `inference_recons.py::sample_meta`), for the integer pixel
(x, y) of the view's ORIGINAL pixel grid (x = column, y = row):

    horizontal bar: x' ∈ [x − 10, x + 10], y' ∈ [y − 2, y + 2]     (21 × 5 px)
    vertical bar:   x' ∈ [x − 2,  x + 2],  y' ∈ [y − 10, y + 10]    (5 × 21 px)

i.e. 21·5 + 5·21 − 5·5 = 185 pixels set to (255, 0, 0) when the marker is fully inside the image;
pixels outside the image are skipped. The marked frame feeds both the Qwen ViT and VGGT.

The marked pixel itself must lie inside the view (0 <= x < width, 0 <= y < height): the pre-training
target is the 3D point of that pixel, so a centre outside the image would train on a point the model
cannot see, with at most a stray arm of the "+" (or nothing) drawn. Such a prompt is refused with a
ValueError that names it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import PIL.Image

MARKER_COLOR = (255, 0, 0)
MARKER_ARM = 10  # half-length of each bar
MARKER_HALF_THICKNESS = 2  # the official `thickness = 3` draws offsets -2..2, i.e. a 5-px stroke


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be an integer pixel coordinate, got {value!r}")


def marker_mask(height: int, width: int, x: int, y: int) -> np.ndarray:
    """Boolean mask `[height, width]` of the pixels the marker at column `x`, row `y` paints."""
    mask = np.zeros((height, width), dtype=bool)
    arm, half = MARKER_ARM, MARKER_HALF_THICKNESS
    # Python slices clip at the borders for us; negative starts must be clamped to 0 by hand.
    mask[max(y - half, 0) : max(y + half + 1, 0), max(x - arm, 0) : max(x + arm + 1, 0)] = True
    mask[max(y - arm, 0) : max(y + arm + 1, 0), max(x - half, 0) : max(x + half + 1, 0)] = True
    return mask


def check_marker_inside(x: int, y: int, width: int, height: int, name: str = "marker") -> None:
    """Raise ValueError naming `name` unless the pixel (x, y) (column, row) lies inside a `width × height` image."""
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(
            f"{name}: marker pixel (x={x}, y={y}) is outside the {width}x{height} view "
            f"(x must be in [0, {width - 1}], y in [0, {height - 1}], in the view's original pixel grid)"
        )


def draw_marker(image: PIL.Image.Image, x: int, y: int, name: str = "marker") -> PIL.Image.Image:
    """Return an RGB copy of `image` with the red "+" centred at column `x`, row `y`.

    The centre must be inside the image (ValueError naming `name` otherwise); arms that cross the border
    are clipped. The input is not modified.
    """
    x, y = _as_int(x, f"{name} x"), _as_int(y, f"{name} y")
    check_marker_inside(x, y, image.width, image.height, name)
    rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # np.array copies
    rgb[marker_mask(rgb.shape[0], rgb.shape[1], x, y)] = MARKER_COLOR
    return PIL.Image.fromarray(rgb, mode="RGB")


def parse_point_prompt(point_prompt, num_views: int, name: str = "point prompt") -> tuple[int, int, int]:
    """Validate `(view_idx, x, y)` against `num_views`; returns plain ints.

    Raises:
        TypeError / ValueError: not a 3-sequence of integers.
        IndexError: `view_idx` outside `[0, num_views)` (negative indices are rejected, not wrapped).
    """
    if not isinstance(point_prompt, Sequence) or isinstance(point_prompt, str) or len(point_prompt) != 3:
        raise ValueError(f"{name} must be (view_idx, x, y), got {point_prompt!r}")
    view_idx = _as_int(point_prompt[0], f"{name} view index")
    x = _as_int(point_prompt[1], f"{name} x")
    y = _as_int(point_prompt[2], f"{name} y")
    if not 0 <= view_idx < num_views:
        raise IndexError(f"{name}: view index {view_idx} is out of range for a sample with {num_views} view(s)")
    return view_idx, x, y


def apply_point_prompt(views: Sequence[PIL.Image.Image], point_prompt, name: str = "point prompt") -> list:
    """Paint the marker `(view_idx, x, y)` into a copy of view `view_idx`; the other views are passed through.

    Args:
        views: the sample's views as PIL images, at their original resolution.
        point_prompt: `(view_idx, x, y)` or None (views returned unchanged, as a new list).
    Returns:
        a new list of views; the caller's list and images are not modified.
    Raises:
        ValueError / TypeError / IndexError: a malformed prompt, or a marker pixel outside its view.
    """
    views = list(views)
    if point_prompt is None:
        return views
    view_idx, x, y = parse_point_prompt(point_prompt, len(views), name)
    views[view_idx] = draw_marker(views[view_idx], x, y, name=f"{name} (view {view_idx})")
    return views
