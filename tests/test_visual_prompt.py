"""The official red "+" marker: exact pixels, border clipping, no mutation, bad view indices."""

import numpy as np
import PIL.Image
import pytest

from gap_mllm.image_utils_gap_mllm import apply_point_prompt, draw_marker, marker_mask, parse_point_prompt

RED = np.array([255, 0, 0], dtype=np.uint8)


def _reference_marker_pixels(height, width, x, y):
    """The official double loop of `inference_recons.py::sample_meta`, written out independently."""
    pixels = set()
    for dy in range(-2, 3):  # thickness 3 → offsets -2..2
        for dx in range(-10, 11):
            if 0 <= x + dx < width and 0 <= y + dy < height:
                pixels.add((x + dx, y + dy))
    for dx in range(-2, 3):
        for dy in range(-10, 11):
            if 0 <= x + dx < width and 0 <= y + dy < height:
                pixels.add((x + dx, y + dy))
    return pixels


def _red_pixels(image):
    array = np.asarray(image)
    ys, xs = np.nonzero(np.all(array == RED, axis=-1))
    return set(zip(xs.tolist(), ys.tolist()))


@pytest.mark.parametrize(
    "height, width, x, y, expected_count",
    [
        (60, 80, 40, 30, 185),  # fully inside: 21·5 + 5·21 − 5·5
        (60, 80, 0, 0, 11 * 3 + 3 * 11 - 3 * 3),  # top-left corner: only the +x/+y arms, 3-px strokes
        (60, 80, 79, 59, 11 * 3 + 3 * 11 - 3 * 3),  # bottom-right corner
        (60, 80, 5, 30, 16 * 5 + 5 * 21 - 5 * 5),  # left arm cut at x = 0
    ],
)
def test_marker_pixels_exact(height, width, x, y, expected_count):
    base = np.full((height, width, 3), 7, dtype=np.uint8)
    marked = draw_marker(PIL.Image.fromarray(base), x, y)
    red = _red_pixels(marked)
    assert red == _reference_marker_pixels(height, width, x, y)
    assert len(red) == expected_count
    # every other pixel keeps its value
    untouched = np.asarray(marked)[~marker_mask(height, width, x, y)]
    assert np.all(untouched == 7)


def test_marker_geometry_centre_and_arms():
    marked = np.asarray(draw_marker(PIL.Image.new("RGB", (100, 100)), 50, 40))
    is_red = np.all(marked == RED, axis=-1)
    assert is_red[40, 50]
    assert is_red[40, 40] and is_red[40, 60] and not is_red[40, 39] and not is_red[40, 61]  # horizontal bar x ± 10
    assert is_red[30, 50] and is_red[50, 50] and not is_red[29, 50] and not is_red[51, 50]  # vertical bar y ± 10
    assert is_red[38, 40] and is_red[42, 40] and not is_red[37, 40] and not is_red[43, 40]  # 5-px stroke
    assert is_red[30, 48] and is_red[30, 52] and not is_red[30, 47] and not is_red[30, 53]


def test_draw_marker_never_mutates_input():
    array = np.zeros((30, 30, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(array)
    before = np.asarray(image).copy()
    marked = draw_marker(image, 15, 15)
    assert marked is not image
    assert np.array_equal(np.asarray(image), before)
    assert len(_red_pixels(marked)) == 185


def test_apply_point_prompt_marks_only_the_selected_view():
    views = [PIL.Image.new("RGB", (40, 40), (0, 0, 255)) for _ in range(3)]
    out = apply_point_prompt(views, (1, 20, 20))
    assert out is not views and out[0] is views[0] and out[2] is views[2]
    assert len(_red_pixels(out[1])) == 185
    assert all(len(_red_pixels(v)) == 0 for v in views)  # the caller's views are untouched
    assert apply_point_prompt(views, None) == views


@pytest.mark.parametrize("view_idx", [3, -1, 10])
def test_bad_view_index_raises_clear_error(view_idx):
    views = [PIL.Image.new("RGB", (10, 10))] * 3
    with pytest.raises(IndexError, match=rf"view index {view_idx} is out of range for a sample with 3 view"):
        apply_point_prompt(views, (view_idx, 1, 1))


@pytest.mark.parametrize(
    "prompt, error",
    [
        ((0, 1.5, 2), ValueError),
        ((0, "1", 2), TypeError),
        ((0, 1), ValueError),
        ("012", ValueError),
        ((True, 1, 1), TypeError),
    ],
)
def test_malformed_point_prompt(prompt, error):
    with pytest.raises(error):
        parse_point_prompt(prompt, 2)


def test_integral_floats_and_numpy_ints_are_accepted():
    assert parse_point_prompt((np.int64(1), 3.0, np.int32(4)), 2) == (1, 3, 4)


@pytest.mark.parametrize("x, y", [(-3, 30), (80, 30), (40, -1), (40, 60), (200, 200), (-1, -1)])
def test_marker_pixel_outside_the_view_is_refused_by_name(x, y):
    """The centre left of the image used to draw only an arm tip (or nothing): an unmarked sample."""
    image = PIL.Image.new("RGB", (80, 60))
    with pytest.raises(ValueError, match=rf"marker pixel \(x={x}, y={y}\) is outside the 80x60 view"):
        draw_marker(image, x, y)
    views = [image, image]
    with pytest.raises(ValueError, match=rf"point prompt of sample 3 \(view 1\): marker pixel \(x={x}, y={y}\)"):
        apply_point_prompt(views, (1, x, y), name="point prompt of sample 3")
