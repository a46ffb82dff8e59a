"""The Space's frames (cli/frame_grid.py): a grid whose column count keeps up to 8 whole views in
the height a 1280×800 window leaves, the marked view first for the marker task. tests/test_space_browser.py checks
the page itself in Chromium."""

from __future__ import annotations

import math

import pytest

from gap_mllm.cli.frame_grid import (CAPTION_PX, FRAMES_HEIGHT_PX, FRAMES_WIDTH_PX, GAP_PX, frame_caption,
                                     frame_order, grid_columns)
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings


def grid_height(sizes, columns) -> float:
    rows = math.ceil(len(sizes) / columns)
    cell = (FRAMES_WIDTH_PX - (columns - 1) * GAP_PX) / columns
    return rows * (cell * max(h / w for w, h in sizes) + CAPTION_PX) + (rows - 1) * GAP_PX


@pytest.mark.parametrize("sizes, columns", [
    ([(160, 128)] * 4, 4),   # a bundled room: one row (2 columns of 2 rows would be 640 px tall)
    ([(160, 128)] * 8, 4),   # 8 views: two rows of four
    ([(400, 270)] * 8, 4),   # the photos
    ([(128, 96)] * 2, 2),
    ([(128, 96)], 2),        # one frame takes half the width, not the whole column
    ([(300, 400)] * 8, 6),   # portrait frames need more columns to stay in sight
    ([(160, 128)] * 3 + [(100, 180)], 4),  # the tallest frame decides
])
def test_the_fewest_columns_that_keep_every_view_in_sight(sizes, columns):
    assert grid_columns(sizes) == columns
    assert grid_height(sizes, columns) <= FRAMES_HEIGHT_PX
    if columns > 2:
        assert grid_height(sizes, columns - 1) > FRAMES_HEIGHT_PX  # one column fewer would not fit


def test_the_marked_view_comes_first_with_its_caption():
    assert frame_order(4, (2, 80, 64)) == [2, 0, 1, 3]
    assert frame_order(4, None) == [0, 1, 2, 3]
    assert frame_order(4, (7, 0, 0)) == [0, 1, 2, 3]  # a marker of no shown view changes nothing
    assert [frame_caption(index, (2, 80, 64)) for index in frame_order(4, (2, 80, 64))] == [
        "frame 2 (marked)", "frame 0", "frame 1", "frame 3"]


def test_the_backend_hands_the_page_the_marked_view_first(tmp_path):
    backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=4), work_dir=tmp_path)
    out = backend.run(None, "synthetic room A", "marker point reconstruction", marker_text="2 80 64")
    assert [path.name for path in out.frames] == ["frame_2.png", "frame_0.png", "frame_1.png", "frame_3.png"]
    assert out.captions == ["frame 2 (marked)", "frame 0", "frame 1", "frame 3"]
    assert out.columns == 4  # the bundled room's four 160×128 views in one row
    detection = backend.run(None, "synthetic room A", "3D object detection")
    assert [path.name for path in detection.frames] == [f"frame_{index}.png" for index in range(4)]
    assert detection.captions == [f"frame {index}" for index in range(4)]
